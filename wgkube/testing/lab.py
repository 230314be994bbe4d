"""A lab of WireGuard "nodes" on one machine: network namespaces on a bridge, an API emulator
process, and the real `wg-kube` processes inside the namespaces (for the demo and tests).

Addresses come from 198.18.0.0/24 (the benchmarking range): nothing outside this machine
is ever addressed. wireguard-go's UAPI sockets live in one directory shared by every
namespace, so each node gets its own interface name. Needs root.

Readiness is judged by the thing answering (the emulator answers an authenticated LIST,
the hub reports a handshake), never by a file that may be left from an earlier run. What
a lab makes is recorded in `state.json` as it is made, so `clean` (also from another
process, after a `kill -9`) removes all of it; `sweep` removes what carries the lab's
names even without that record.

Optionally (`make_internet`, `place`, `start_router`, TWO_UNDERLAY_HUB_ARGS) a second
bridge stands for the internet: the hub on both, spokes out there, ordinary cluster
nodes running `wg-kube router` on the node network (tests/router, and a demo of the
Cilium path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wgkube.desired.relay import MAX_RELAYS, relay_interface_name
from wgkube.desired.spoke import MAX_HUBS, hub_interface_name
from wgkube.diff.model import ObservedState
from wgkube.domain.keys import PrivateKey, load_private_key
from wgkube.kernel import Backend, Kernel, open_kernel
from wgkube.testing.apiserver import ApiServer, EmulatedApiServer, KubeHttpClient, RealApiServer
from wgkube.testing.netns import NetNS, PingResult, finish_ping, start_ping

BRIDGE = "wgkdemo0"
NS_PREFIX = "wgkdemo-"
VETH_PREFIX = "wgkd-"
SOCKET_DIR = Path("/var/run/wireguard")
UNDERLAY = "198.18.0"
HUB_WG = "100.96.0.1"
API_PORT = 16443
INTERNET_BRIDGE = "wgkdemo1"
INTERNET_VETH_PREFIX = "wgki-"
INTERNET = "198.18.1"
"""The optional second underlay (`make_internet`): it stands for the internet between the
hub's public side and the spokes, while BRIDGE is the cluster's node network. Only the
hub is on both, so nothing but the tunnel joins spokes and cluster nodes."""
ROUTER_PROBE_PORT = 9799
TWO_UNDERLAY_HUB_ARGS = (
    "--allowed-ips",
    f"100.96.0.0/24,{UNDERLAY}.0/24",
    "--router-prefixes",
    "100.96.0.0/24",
)
"""`Lab(hub_args=...)` for the two-underlay layout: spokes route the cluster's node network
through the hub, and ordinary nodes (`start_router`) route the overlay via its InternalIP."""
SLOW = 5.0 if os.environ.get("WGKUBE_IN_VM") else 1.0
"""Inside the emulated (TCG) test VM, starting Python alone takes many seconds."""


@dataclass
class Node:
    name: str
    role: str  # "hub" | "spoke"
    index: int
    ns: str = ""
    pid: int = 0
    site: str = "cluster"
    """With `place`: "cluster" (the node network), "internet" (a spoke out there) or
    "both" (the hub: InternalIP on the node network, ExternalIP on the internet)."""
    address: str = ""
    """The overlay address when not the default (a second hub needs its own)."""
    args: tuple[str, ...] = ()
    """Extra arguments for this node's `wg-kube` (e.g. --hub-priority)."""

    @property
    def underlay(self) -> str:
        return f"{INTERNET if self.site == 'internet' else UNDERLAY}.{self.index}"

    @property
    def public(self) -> str:
        """The address on the internet bridge (sites "internet" and "both")."""
        return f"{INTERNET}.{self.index}"

    @property
    def internet_veth(self) -> str:
        return f"{INTERNET_VETH_PREFIX}{self.name}"[:15]

    @property
    def wg_address(self) -> str:
        if self.address:
            return self.address
        return HUB_WG if self.role == "hub" else f"100.96.0.{self.index}"

    @property
    def ifname(self) -> str:
        # wireguard-go's UAPI sockets share /var/run/wireguard across namespaces: one name each.
        return f"wg-{self.name}"[:15]

    @property
    def veth(self) -> str:
        return f"wgkd-{self.name}"[:15]


@dataclass
class LabState:
    """What a lab made, so that `clean` (also from another process) can remove all of it."""

    workdir: str
    bridge: bool = False
    internet: bool = False
    api_pid: int = 0
    nodes: list[Node] = field(default_factory=list)

    def save(self) -> None:
        # Atomically: a run killed while writing must leave the previous record whole.
        path = Path(self.workdir) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, workdir: Path) -> LabState:
        data = json.loads((workdir / "state.json").read_text())
        nodes = [Node(**{**n, "args": tuple(n.get("args", ()))}) for n in data.pop("nodes")]
        return cls(**data, nodes=nodes)


class LabError(RuntimeError):
    """A lab step failed; the message is one line that names the step and its log."""


def last_line(path: Path) -> str:
    """The last non-empty line of a log (what a failed process said last), or a note."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    return next((ln for ln in reversed(lines) if ln), "(empty log)")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


class Lab:
    """Build with `make_bridge`, `start_api`, `add_node`, `start_process`; undo with `clean`."""

    def __init__(
        self,
        workdir: Path,
        *,
        backend: Backend = "auto",
        hub_args: tuple[str, ...] = (),
        spoke_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.backend = backend
        self.hub_args = hub_args
        self.spoke_env = spoke_env or {}
        """Extra environment for every spoke (`{ip}` becomes the node's underlay IP,
        `{public}` its address on the internet bridge)."""
        self._children: list[subprocess.Popen[bytes]] = []
        self._kernels: dict[str, Kernel] = {}
        self._in_process: EmulatedApiServer | None = None
        """Kept to reap them: a Popen dropped while its process runs is a ResourceWarning."""
        self.state = LabState(str(workdir))
        self.api: ApiServer | None = None
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfigs: dict[str, Path] = {}
        """Per node name (use_api); the emulator's admin kubeconfig otherwise."""
        for sub in ("logs", "keys"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)

    # -- underlay, API, nodes ------------------------------------------------------------
    def make_bridge(self) -> None:
        # Recorded before it is made, so that a run killed in between still removes it.
        self.state.bridge = True
        self.state.save()
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "address", "add", f"{UNDERLAY}.254/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")

    def make_internet(self) -> None:
        """The second underlay (INTERNET_BRIDGE), for `place`; `clean` removes it."""
        sh("ip", "link", "add", INTERNET_BRIDGE, "type", "bridge")
        self.state.internet = True
        self.state.save()
        sh("ip", "address", "add", f"{INTERNET}.254/24", "dev", INTERNET_BRIDGE)
        sh("ip", "link", "set", INTERNET_BRIDGE, "up")

    def place(self, node: Node, *, api_address: str) -> None:
        """Like `add_node`, on the two underlays (`make_bridge`, `make_internet`) by
        `node.site`. The Node gets the addresses a cloud would give it: the hub an
        InternalIP on the node network and an ExternalIP on the internet; an ordinary
        node (role "router") its InternalIP; a spoke its WireGuard address as InternalIP
        (its kubelet's --node-ip). `api_address` (one of this host's bridge addresses)
        is reached directly or by a host route through this host, which delivers it
        locally: no route joins the two underlays."""
        ns = NetNS(f"wgkdemo-{node.name}")
        sh("ip", "netns", "add", ns.name)
        node.ns = ns.name
        self.state.nodes.append(node)
        self.state.save()
        ns.ip("link", "set", "lo", "up")
        legs: list[tuple[str, str, str, str]] = []  # (host veth, bridge, ifname, address)
        if node.site in ("cluster", "both"):
            legs.append((node.veth, BRIDGE, "eth0", f"{UNDERLAY}.{node.index}"))
        if node.site in ("internet", "both"):
            ifname = "eth1" if node.site == "both" else "eth0"
            legs.append((node.internet_veth, INTERNET_BRIDGE, ifname, node.public))
        for veth, bridge, ifname, address in legs:
            sh("ip", "link", "add", veth, "type", "veth", "peer", ifname, "netns", ns.name)
            sh("ip", "link", "set", veth, "master", bridge, "up")
            ns.ip("address", "add", f"{address}/24", "dev", ifname)
            ns.ip("link", "set", ifname, "up")
        api_net = api_address.rpartition(".")[0]
        if all(address.rpartition(".")[0] != api_net for *_, address in legs):
            host = f"{legs[0][3].rpartition('.')[0]}.254"
            ns.ip("route", "add", f"{api_address}/32", "via", host)
        if node.site == "both":
            addresses = {"InternalIP": f"{UNDERLAY}.{node.index}", "ExternalIP": node.public}
        elif node.site == "internet":
            addresses = {"InternalIP": node.wg_address}
        else:
            addresses = {"InternalIP": node.underlay}
        assert self.api is not None
        self.api.create_node(node.name, addresses=addresses)

    def start_router(self, node: Node, *args: str) -> None:
        """`wg-kube router` in the node's namespace, probes on its underlay address."""
        kubeconfig = self.kubeconfigs.get(node.name, self.kubeconfig)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WG_", "KUBE"))}
        argv = [
            "router",
            "--node-name",
            node.name,
            "--kubeconfig",
            str(kubeconfig),
            "--probe-address",
            f"{node.underlay}:{ROUTER_PROBE_PORT}",
            *args,
        ]
        self._spawn(node, argv, env)

    def start_api(self, *, in_process: bool = False, host: str = f"{UNDERLAY}.254") -> None:
        """The emulator on a bridge address (`host`: {INTERNET}.254 puts it on the internet
        side, as a managed cluster's public endpoint): a process of its own (it outlives us
        with --keep), or `in_process` in a thread of ours (one Python start less: tests)."""
        if in_process:
            server = EmulatedApiServer(host=host, port=API_PORT, kubeconfig_path=self.kubeconfig)
            server.__enter__()
            self._in_process = server
            self.api = server
            self._namespace()
            return
        log_path = self.workdir / "logs" / "apiserver.log"
        # A kubeconfig left by an earlier run names a server that is gone (or another
        # one): only the file our emulator writes, and its answer, count.
        self.kubeconfig.unlink(missing_ok=True)
        log = log_path.open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wgkube.testing.apiserver",
                "--host",
                host,
                "--port",
                str(API_PORT),
                "--kubeconfig",
                str(self.kubeconfig),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._children.append(proc)
        self.state.api_pid = proc.pid
        self.state.save()
        within = 30 * SLOW
        deadline = time.monotonic() + within
        while not self._api_answers():
            if proc.poll() is not None:
                raise LabError(f"the API emulator exited ({last_line(log_path)}); log: {log_path}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"the API emulator did not answer within {within:.0f}s; log: {log_path}"
                )
            time.sleep(0.05)
        self.api = RealApiServer(self.kubeconfig)
        self._namespace()

    def use_api(self, api: ApiServer, kubeconfigs: dict[str, Path]) -> None:
        """Another API server (a real control plane reachable from the namespaces), with
        one kubeconfig per node name: each process runs with its production identity."""
        self.api = api
        self.kubeconfigs = dict(kubeconfigs)

    def _namespace(self) -> None:
        # The hub publishes its announcement in its namespace (manifests/00-namespace.yaml).
        assert self.api is not None
        if self.api.get("namespaces", "wg-kube") is None:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "wg-kube"}}
            self.api.create("namespaces", body)

    def _api_answers(self) -> bool:
        """An authenticated LIST answered with the token of the kubeconfig just written."""
        if not self.kubeconfig.exists():
            return False
        try:
            KubeHttpClient(self.kubeconfig, timeout=2.0).request("GET", "/api/v1/nodes")
        except Exception:  # not written completely, not listening yet, not ours: not ready
            return False
        return True

    def add_node(self, node: Node) -> None:
        ns = NetNS(f"{NS_PREFIX}{node.name}")
        node.ns = ns.name
        self.state.nodes.append(node)
        self.state.save()
        sh("ip", "netns", "add", ns.name)
        ns.ip("link", "set", "lo", "up")
        sh("ip", "link", "add", node.veth, "type", "veth", "peer", "eth0", "netns", ns.name)
        sh("ip", "link", "set", node.veth, "master", BRIDGE, "up")
        ns.ip("address", "add", f"{node.underlay}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        addresses = {"InternalIP": node.underlay}
        if node.role == "hub":
            addresses["ExternalIP"] = node.underlay
        assert self.api is not None
        self.api.create_node(node.name, addresses=addresses)

    def start_process(self, node: Node) -> None:
        key_file = self.workdir / "keys" / f"{node.name}.key"
        kubeconfig = self.kubeconfigs.get(node.name, self.kubeconfig)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WG_", "KUBE"))}
        if node.role == "hub":
            argv = [
                "hub",
                "--backend",
                self.backend,
                "--node-name",
                node.name,
                "--interface",
                node.ifname,
                "--kubeconfig",
                str(kubeconfig),
                "--private-key-file",
                str(key_file),
                "--allowed-ips",
                "100.96.0.0/24",
                "--probe-address",
                f"{node.underlay}:9798",
                *self.hub_args,
                *(("--address", f"{node.address}/32") if node.address else ()),
                *node.args,
            ]
        else:
            argv = ["spoke"]
            env.update(
                KUBECONFIG=str(kubeconfig),
                NODE_NAME=node.name,
                WG_INTERFACE=node.ifname,
                WG_ADDRESS=f"{node.wg_address}/32",
                WG_PRIVATE_KEY_FILE=str(key_file),
                WG_ENDPOINT=node.underlay,
                POLL_INTERVAL="10",
                WG_BACKEND=self.backend,
            )
            env.update(
                {
                    k: v.format(ip=node.underlay, public=node.public)
                    for k, v in self.spoke_env.items()
                }
            )
        self._spawn(node, argv, env)

    def _spawn(self, node: Node, argv: list[str], env: dict[str, str]) -> None:
        """`wg-kube <argv>` in the node's namespace, logging to logs/<node>.log."""
        log = (self.workdir / "logs" / f"{node.name}.log").open("ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.ns, sys.executable, "-m", "wgkube", *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._children.append(proc)
        node.pid = proc.pid
        self.state.save()

    # -- observation -------------------------------------------------------------------
    async def kernel(self, node: Node) -> Kernel:
        """One adapter per node, opened once: opening probes and forks a netns helper."""
        if node.name not in self._kernels:
            self._kernels[node.name] = await open_kernel(self.backend, netns=node.ns)
        return self._kernels[node.name]

    async def observe(self, node: Node) -> ObservedState:
        return await (await self.kernel(node)).observe(node.ifname)

    async def backend_name(self, node: Node) -> str:
        return (await self.kernel(node)).name

    async def close_kernels(self) -> None:
        for kernel in self._kernels.values():
            await kernel.close()
        self._kernels.clear()

    def public_key(self, node: Node) -> str:
        path = self.workdir / "keys" / f"{node.name}.key"
        key: PrivateKey = load_private_key(path, create=False)[0]
        return key.public_key().b64

    def log_path(self, node: Node) -> Path:
        return self.workdir / "logs" / f"{node.name}.log"

    async def wait_handshake(self, spoke: Node, hub: Node, within: float = 40.0) -> None:
        """Until the hub has completed a handshake with this spoke."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (self.workdir / "keys" / f"{spoke.name}.key").exists():
                observed = await self.observe(hub)
                for peer in observed.peers.values():
                    if peer.public_key.b64 == self.public_key(spoke) and peer.last_handshake:
                        return
            self.check_alive()
            await asyncio.sleep(0.2)
        raise LabError(
            f"no handshake between {hub.name} and {spoke.name} in {within:.0f}s; logs: "
            f"{self.log_path(hub)}, {self.log_path(spoke)}"
        )

    def check_alive(self) -> None:
        for node in self.state.nodes:
            if node.pid and not _alive(node.pid):
                status = next(
                    (f" with status {c.returncode}" for c in self._children if c.pid == node.pid),
                    "",
                )
                log = self.log_path(node)
                raise LabError(
                    f"wg-kube {node.role} on {node.name} exited{status} ({last_line(log)}); "
                    f"log: {log}"
                )

    async def ping(self, src: Node, target: str, count: int = 5) -> PingResult:
        proc = await start_ping(NetNS(src.ns), target, count=count, interval=0.2)
        return await finish_ping(proc, stop=False)

    def stop_process(self, node: Node) -> None:
        """SIGTERM the node's wg-kube, as systemd would; its interface stays."""
        _terminate([node.pid])
        node.pid = 0
        self.state.save()
        self._reap()

    def clean(self) -> None:
        clean(self.state)
        self._reap()
        if self._in_process is not None:
            self._in_process.__exit__(None, None, None)
            self._in_process = None

    def _reap(self) -> None:
        for child in list(self._children):
            if child.poll() is not None:
                self._children.remove(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill 0: ask /proc.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def _ours(pid: int) -> bool:
    """Whether `pid` still runs a lab program: a pid from state.json may have been reused
    (after a reboot) by a process that must not be signalled."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"wgkube" in cmdline or b"wireguard-go" in cmdline or b"ping" in cmdline


def _terminate(pids: list[int], *, groups: bool = True) -> None:
    """SIGTERM each process (group), wait up to 10 s, then SIGKILL what is left."""
    pids = [pid for pid in pids if pid and _alive(pid)]
    kill = os.killpg if groups else os.kill
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
    for pid in pids:  # a killed process leaves its namespace only once it is gone
        while _alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)


def _namespace_pids(ns: str) -> list[int]:
    """Every process inside the namespace (wg-kube, wireguard-go, a stray ping)."""
    proc = sh("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _delete_namespace(ns: str) -> None:
    # `ip netns del` only drops the name: a process still inside (wireguard-go holds its
    # TUN device) keeps the namespace, its links and its UAPI socket alive. Stop them first.
    _terminate(_namespace_pids(ns), groups=False)
    sh("ip", "netns", "del", ns, check=False)


def demo_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NS_PREFIX)]


def demo_links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [
        n
        for n in names
        if n in (BRIDGE, INTERNET_BRIDGE) or n.startswith((VETH_PREFIX, INTERNET_VETH_PREFIX))
    ]


def demo_sockets() -> list[Path]:
    """UAPI sockets of lab interfaces (Node.ifname: wg-hub, wg-spoke-N, ...) that nothing
    serves any more: a live one belongs to a wireguard-go that is still running."""
    if not SOCKET_DIR.is_dir():
        return []
    names = [p for p in SOCKET_DIR.glob("wg-*.sock") if p.name[3:].startswith(("hub", "spoke"))]
    return sorted(p for p in names if _stale(p))


def _stale(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except OSError:
            return False
    return False


def api_listener() -> int:
    """The pid of a lab emulator still listening on one of the lab's API addresses, else 0."""
    wanted = {
        "{:08X}:{:04X}".format(
            int.from_bytes(bytes(int(b) for b in f"{net}.254".split(".")), "little"), API_PORT
        )
        for net in (UNDERLAY, INTERNET)
    }
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] in wanted and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return 0
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        pid = int(fd_dir.parent.name)
                        if b"wgkube.testing.apiserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            return pid
    return 0


def leftovers() -> list[str]:
    """What of a lab is still on this machine (namespaces, links, sockets, the emulator)."""
    found = [f"namespace {n}" for n in demo_namespaces()]
    found += [f"link {n}" for n in demo_links()]
    found += [f"socket {p}" for p in demo_sockets()]
    if pid := api_listener():
        found.append(f"API emulator (pid {pid})")
    return found


def clean(state: LabState) -> None:
    """Stop processes, delete namespaces (their WireGuard devices go too), the bridge."""
    _terminate([pid for pid in [n.pid for n in state.nodes] + [state.api_pid] if _ours(pid)])
    for node in state.nodes:
        if node.ns:
            _delete_namespace(node.ns)
        sh("ip", "link", "del", node.veth, check=False)
        sh("ip", "link", "del", node.internet_veth, check=False)
        for slot in range(MAX_HUBS):  # a spoke's devices for further hubs, too
            with contextlib.suppress(FileNotFoundError):
                (SOCKET_DIR / f"{hub_interface_name(node.ifname, slot)}.sock").unlink()
        for index in range(1, MAX_RELAYS + 1):  # a hub's relay interfaces
            with contextlib.suppress(FileNotFoundError):
                (SOCKET_DIR / f"{relay_interface_name(node.ifname, index)}.sock").unlink()
    if state.bridge:
        sh("ip", "link", "del", BRIDGE, check=False)
    if state.internet:
        sh("ip", "link", "del", INTERNET_BRIDGE, check=False)
    with contextlib.suppress(FileNotFoundError):
        (Path(state.workdir) / "state.json").unlink()


def sweep() -> None:
    """Remove everything that carries the lab's names, recorded in a state.json or not
    (a run killed between making a thing and recording it, or one from elsewhere)."""
    if pid := api_listener():
        _terminate([pid])
    for ns in demo_namespaces():
        _delete_namespace(ns)
    for link in demo_links():
        if link not in (BRIDGE, INTERNET_BRIDGE):
            sh("ip", "link", "del", link, check=False)
    for bridge in (BRIDGE, INTERNET_BRIDGE):
        if bridge in demo_links():
            sh("ip", "link", "del", bridge, check=False)
    for path in demo_sockets():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

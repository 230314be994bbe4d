"""A lab of WireGuard "nodes" on one machine: network namespaces on a bridge, an API emulator
process, and the real `wg-kube` processes inside the namespaces (for the demo and tests).

Addresses come from 198.18.0.0/24 (the benchmarking range): nothing outside this machine
is ever addressed. wireguard-go's UAPI sockets live in one directory shared by every
namespace, so each node gets its own interface name. Needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wgkube.desired.spoke import MAX_HUBS, hub_interface_name
from wgkube.diff.model import ObservedState
from wgkube.domain.keys import PrivateKey, load_private_key
from wgkube.kernel import Backend, Kernel, open_kernel
from wgkube.testing.apiserver import ApiServer, EmulatedApiServer, RealApiServer
from wgkube.testing.netns import NetNS, PingResult, finish_ping, start_ping

BRIDGE = "wgkdemo0"
UNDERLAY = "198.18.0"
HUB_WG = "100.96.0.1"
API_PORT = 16443
SLOW = 5.0 if os.environ.get("WGKUBE_IN_VM") else 1.0
"""Inside the emulated (TCG) test VM, starting Python alone takes many seconds."""


@dataclass
class Node:
    name: str
    role: str  # "hub" | "spoke"
    index: int
    ns: str = ""
    pid: int = 0
    address: str = ""
    """The overlay address when not the default (a second hub needs its own)."""
    args: tuple[str, ...] = ()
    """Extra arguments for this node's `wg-kube` (e.g. --hub-priority)."""

    @property
    def underlay(self) -> str:
        return f"{UNDERLAY}.{self.index}"

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
    api_pid: int = 0
    nodes: list[Node] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.workdir) / "state.json"
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, workdir: Path) -> LabState:
        data = json.loads((workdir / "state.json").read_text())
        nodes = [Node(**{**n, "args": tuple(n.get("args", ()))}) for n in data.pop("nodes")]
        return cls(**data, nodes=nodes)


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
        """Extra environment for every spoke (`{ip}` becomes the node's underlay IP)."""
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
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        self.state.bridge = True
        self.state.save()
        sh("ip", "address", "add", f"{UNDERLAY}.254/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")

    def start_api(self, *, in_process: bool = False) -> None:
        """The emulator on the bridge address: a process of its own (it outlives us with
        --keep), or `in_process` in a thread of ours (one Python start less: tests)."""
        if in_process:
            server = EmulatedApiServer(
                host=f"{UNDERLAY}.254", port=API_PORT, kubeconfig_path=self.kubeconfig
            )
            server.__enter__()
            self._in_process = server
            self.api = server
            self._namespace()
            return
        log = (self.workdir / "logs" / "apiserver.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wgkube.testing.apiserver",
                "--host",
                f"{UNDERLAY}.254",
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
        deadline = time.monotonic() + 15 * SLOW
        while not self.kubeconfig.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API emulator did not start; see logs/apiserver.log")
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

    def add_node(self, node: Node) -> None:
        ns = NetNS(f"wgkdemo-{node.name}")
        sh("ip", "netns", "add", ns.name)
        node.ns = ns.name
        self.state.nodes.append(node)
        self.state.save()
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
            env.update({k: v.format(ip=node.underlay) for k, v in self.spoke_env.items()})
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
        raise RuntimeError(f"no handshake between {hub.name} and {spoke.name} in {within}s")

    def check_alive(self) -> None:
        for node in self.state.nodes:
            if node.pid and not _alive(node.pid):
                log = (self.workdir / "logs" / f"{node.name}.log").read_text()[-2000:]
                raise RuntimeError(f"wg-kube on {node.name} exited:\n{log}")

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


def _terminate(pids: list[int]) -> None:
    """SIGTERM each process group, wait up to 10 s, then SIGKILL what is left."""
    pids = [pid for pid in pids if pid]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def clean(state: LabState) -> None:
    """Stop processes, delete namespaces (their WireGuard devices go too), the bridge."""
    _terminate([n.pid for n in state.nodes] + [state.api_pid])
    for node in state.nodes:
        if node.ns:
            sh("ip", "netns", "del", node.ns, check=False)
        sh("ip", "link", "del", node.veth, check=False)
        for slot in range(MAX_HUBS):  # a spoke's devices for further hubs, too
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/var/run/wireguard/{hub_interface_name(node.ifname, slot)}.sock")
    if state.bridge:
        sh("ip", "link", "del", BRIDGE, check=False)
    with contextlib.suppress(FileNotFoundError):
        (Path(state.workdir) / "state.json").unlink()

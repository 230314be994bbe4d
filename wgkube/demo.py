"""`make demo`: a hub and spokes over real WireGuard on this machine, against the API emulator.

Every "node" is a network namespace joined to an underlay bridge in 198.18.0.0/24 (the
benchmarking range: nothing outside this machine is ever addressed). The real
`wg-kube hub` and `wg-kube spoke` processes run inside them and find each other only
through Node objects in the emulated API server. Needs root.

    python -m wgkube.demo            run, print, clean up
    python -m wgkube.demo --keep     leave everything running to explore
    python -m wgkube.demo --clean    remove what a --keep run left
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wgkube.diff.model import ObservedState
from wgkube.domain.annotations import DEFAULT_PREFIX
from wgkube.domain.keys import PrivateKey, load_private_key
from wgkube.kernel import open_kernel
from wgkube.testing.apiserver import RealApiServer
from wgkube.testing.netns import NetNS, PingResult, can_make_namespaces, finish_ping, start_ping

BRIDGE = "wgkdemo0"
UNDERLAY = "198.18.0"
HUB_WG = "100.96.0.1"
API_PORT = 16443
PING_INTERVAL = 0.01
ORIGINAL_COST = (
    "the original Go controller restarts the interface on every peer change (wg-quick "
    "down/up); with kernel WireGuard that costs a spoke the hub cannot dial ~930 pings at "
    "10 ms, a ~15 s gap (README, 'Behaviour on peer changes')"
)


@dataclass
class Node:
    name: str
    role: str  # "hub" | "spoke"
    index: int
    ns: str = ""
    pid: int = 0

    @property
    def underlay(self) -> str:
        return f"{UNDERLAY}.{self.index}"

    @property
    def wg_address(self) -> str:
        return HUB_WG if self.role == "hub" else f"100.96.0.{self.index}"

    @property
    def ifname(self) -> str:
        # wireguard-go's UAPI sockets share /var/run/wireguard across namespaces: one name each.
        return f"wg-{self.name}"[:15]

    @property
    def veth(self) -> str:
        return f"wgkd-{self.name}"[:15]


@dataclass
class DemoState:
    """What a run made, so that `--clean` (or a failure) can remove all of it."""

    workdir: str
    bridge: bool = False
    api_pid: int = 0
    nodes: list[Node] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.workdir) / "state.json"
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, workdir: Path) -> DemoState:
        data = json.loads((workdir / "state.json").read_text())
        nodes = [Node(**n) for n in data.pop("nodes")]
        return cls(**data, nodes=nodes)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def say(text: str = "") -> None:
    print(text, flush=True)


class Demo:
    def __init__(self, workdir: Path, spokes: int) -> None:
        self.workdir = workdir
        self.state = DemoState(str(workdir))
        self.spoke_count = spokes
        self.api: RealApiServer | None = None
        self.kubeconfig = workdir / "kubeconfig"
        self.summary: dict[str, Any] = {}

    # -- underlay, API, nodes ------------------------------------------------------------
    def make_bridge(self) -> None:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        self.state.bridge = True
        self.state.save()
        sh("ip", "address", "add", f"{UNDERLAY}.254/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")

    def start_api(self) -> None:
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
        self.state.api_pid = proc.pid
        self.state.save()
        deadline = time.monotonic() + 15
        while not self.kubeconfig.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API emulator did not start; see logs/apiserver.log")
            time.sleep(0.05)
        self.api = RealApiServer(self.kubeconfig)

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
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WG_", "KUBE"))}
        if node.role == "hub":
            argv = [
                "hub",
                "--node-name",
                node.name,
                "--interface",
                node.ifname,
                "--kubeconfig",
                str(self.kubeconfig),
                "--private-key-file",
                str(key_file),
                "--allowed-ips",
                "100.96.0.0/24",
                "--probe-address",
                f"{node.underlay}:9798",
            ]
        else:
            argv = ["spoke"]
            env.update(
                KUBECONFIG=str(self.kubeconfig),
                NODE_NAME=node.name,
                WG_INTERFACE=node.ifname,
                WG_ADDRESS=f"{node.wg_address}/32",
                WG_PRIVATE_KEY_FILE=str(key_file),
                WG_ENDPOINT=node.underlay,
                POLL_INTERVAL="10",
            )
        log = (self.workdir / "logs" / f"{node.name}.log").open("ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.ns, sys.executable, "-m", "wgkube", *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        node.pid = proc.pid
        self.state.save()

    # -- observation -------------------------------------------------------------------
    async def observe(self, node: Node) -> ObservedState:
        kernel = await open_kernel("auto", netns=node.ns)
        try:
            return await kernel.observe(node.ifname)
        finally:
            await kernel.close()

    async def backend_name(self, node: Node) -> str:
        kernel = await open_kernel("auto", netns=node.ns)
        await kernel.close()
        return kernel.name

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

    async def status_table(self, hub: Node) -> list[dict[str, str]]:
        observed = await self.observe(hub)
        by_key = {p.public_key.b64: p for p in observed.peers.values()}
        rows = [
            {
                "node": hub.name,
                "role": "hub",
                "address": hub.wg_address,
                "public key": self.public_key(hub)[:10] + "…",
                "endpoint": f"{hub.underlay}:51820",
                "allowed ips": "100.96.0.0/24",
                "handshake": "-",
                "rx/tx": "-",
            }
        ]
        now = time.time()
        for node in self.state.nodes:
            if node.role != "spoke":
                continue
            peer = by_key.get(self.public_key(node))
            rows.append(
                {
                    "node": node.name,
                    "role": "spoke",
                    "address": node.wg_address,
                    "public key": self.public_key(node)[:10] + "…",
                    "endpoint": str(peer.endpoint) if peer and peer.endpoint else "(learning)",
                    "allowed ips": ",".join(map(str, sorted(peer.allowed_ips, key=str)))
                    if peer
                    else "-",
                    "handshake": f"{now - peer.last_handshake:.0f}s ago"
                    if peer and peer.last_handshake
                    else "never",
                    "rx/tx": f"{_size(peer.rx_bytes)}/{_size(peer.tx_bytes)}" if peer else "-",
                }
            )
        return rows

    async def ping(self, src: Node, target: str, count: int = 5) -> PingResult:
        proc = await start_ping(NetNS(src.ns), target, count=count, interval=0.2)
        return await finish_ping(proc, stop=False)

    # -- the show ------------------------------------------------------------------------
    async def run(self) -> bool:
        for sub in ("logs", "keys"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        say(
            "wg-kube demo: one hub and spokes, each a network namespace on bridge "
            f"{BRIDGE} ({UNDERLAY}.0/24)"
        )
        self.make_bridge()
        self.start_api()
        say(f"  API emulator at http://{UNDERLAY}.254:{API_PORT} (kubeconfig {self.kubeconfig})")
        hub = Node("hub", "hub", 1)
        self.add_node(hub)
        self.start_process(hub)
        backend = await self.backend_name(hub)
        say(
            f"  WireGuard: {backend}"
            + (
                " (wireguard-go; this kernel has no WireGuard module)"
                if backend == "userspace"
                else " (the kernel module)"
            )
        )
        spokes = [Node(f"spoke-{i}", "spoke", 10 + i) for i in range(1, self.spoke_count + 1)]
        for spoke in spokes:
            self.add_node(spoke)
            self.start_process(spoke)
        for spoke in spokes:
            await self.wait_handshake(spoke, hub)
        say("  every spoke has completed a handshake with the hub\n")
        print_table(await self.status_table(hub))

        say("\nping over the tunnel (5 each):")
        ok = True
        pings: dict[str, dict[str, int]] = {}
        for spoke in spokes:
            result = await self.ping(spoke, HUB_WG)
            pings[f"{spoke.name}->hub"] = {"sent": result.transmitted, "received": result.received}
            ok &= result.received == result.transmitted > 0
            say(f"  {spoke.name} -> hub {HUB_WG}: {result.received}/{result.transmitted}")
        if len(spokes) >= 2:
            a, b = spokes[0], spokes[1]
            result = await self.ping(a, b.wg_address)
            pings[f"{a.name}->{b.name}"] = {"sent": result.transmitted, "received": result.received}
            ok &= result.received == result.transmitted > 0
            say(
                f"  {a.name} -> {b.name} {b.wg_address} (through the hub): "
                f"{result.received}/{result.transmitted}"
            )

        new = Node(f"spoke-{len(spokes) + 1}", "spoke", 10 + len(spokes) + 1)
        say(
            f"\nadding {new.name} live while {len(spokes)} spokes ping the hub every "
            f"{PING_INTERVAL * 1000:.0f} ms:"
        )
        running = [
            await start_ping(NetNS(s.ns), HUB_WG, count=100000, interval=PING_INTERVAL)
            for s in spokes
        ]
        started = time.monotonic()
        try:
            await asyncio.sleep(1.0)
            self.add_node(new)
            self.start_process(new)
            await self.wait_handshake(new, hub)
            await asyncio.sleep(1.0)
        finally:
            results = [await finish_ping(p) for p in running]
        took = time.monotonic() - started
        lost = sum(r.lost for r in results)
        sent = sum(r.transmitted for r in results)
        say(
            f"  {new.name} joined and completed its handshake; {sent} pings in {took:.1f}s, "
            f"lost {lost}"
        )
        say(f"  (for comparison: {ORIGINAL_COST})\n")
        ok &= lost == 0 and sent > 0
        print_table(await self.status_table(hub))
        self.summary = {
            "backend": backend,
            "pings": pings,
            "live_add": {"sent": sent, "lost": lost, "seconds": round(took, 2)},
            "ok": ok,
        }
        return ok


def print_table(rows: list[dict[str, str]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    say("  " + "  ".join(c.upper().ljust(widths[c]) for c in cols))
    for row in rows:
        say("  " + "  ".join(row[c].ljust(widths[c]) for c in cols))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n}{unit}"
        n //= 1024
    return f"{n}GiB"


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


def clean(state: DemoState) -> None:
    """Stop processes, delete namespaces (their WireGuard devices go too), the bridge."""
    for node in state.nodes:
        if node.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
    if state.api_pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(state.api_pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in [n.pid for n in state.nodes if n.pid] + [state.api_pid]:
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    for node in state.nodes:
        if node.ns:
            sh("ip", "netns", "del", node.ns, check=False)
        sh("ip", "link", "del", node.veth, check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/var/run/wireguard/{node.ifname}.sock")
    if state.bridge:
        sh("ip", "link", "del", BRIDGE, check=False)
    with contextlib.suppress(FileNotFoundError):
        (Path(state.workdir) / "state.json").unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wgkube.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", default=".demo", help="logs, keys, kubeconfig (default .demo)")
    parser.add_argument("--spokes", type=int, default=3, help="spokes at the start (default 3)")
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--clean", action="store_true", help="remove what a --keep run left")
    parser.add_argument("--json", help="write a machine-readable summary here")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if args.clean:
        if (workdir / "state.json").exists():
            clean(DemoState.load(workdir))
            say("demo removed")
        else:
            say("nothing to clean")
        return 0
    why = can_make_namespaces()
    if why:
        say(f"the demo {why}: run it as root")
        return 2
    if (workdir / "state.json").exists():
        say(f"a previous demo is still set up; removing it first ({workdir}/state.json)")
        clean(DemoState.load(workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(workdir, args.spokes)
    ok = False
    try:
        ok = asyncio.run(demo.run())
    except KeyboardInterrupt:
        say("\ninterrupted")
    except RuntimeError as exc:
        say(f"\ndemo failed: {exc}")
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(demo.summary | {"ok": ok}, indent=1))
        if args.keep and ok:
            say("\nleft running. Explore with:")
            say(f"  export KUBECONFIG={demo.kubeconfig}")
            say(f"  kubectl get nodes -L {DEFAULT_PREFIX}hub,{DEFAULT_PREFIX}peer")
            say("  ip netns exec wgkdemo-hub wg show wg-hub")
            say(f"  logs: {workdir}/logs/   remove it all: make demo-clean")
        else:
            clean(demo.state)
            say("cleaned up: namespaces, processes, interfaces and the bridge are gone")
    say("RESULT: " + ("all pings answered, 0 lost during the live change" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

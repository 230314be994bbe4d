"""`make bench`: failover between two hubs, per fault, with the issue's targets MET/NOT MET.

Two hubs and two spokes, real `wg-kube` processes with wireguard-go in the lab's network
namespaces (wgkube.testing.lab) against the API emulator; the spokes ping each other
every 10 ms across the overlay. For each fault on the active hub (its underlay link
down, its WireGuard UDP dropped by nftables, its IP forwarding off) the outage is the
number of lost echo requests x 10 ms, in each direction; route changes are counted from
the spokes' logs. Each fault is cleared, the spokes move back after the hold-down, and
the next fault starts. The one-way fault (hub-a's WireGuard UDP to spoke-1 dropped, all
else intact) moves spoke-1 only, and hub-a relays to spoke-1 through hub-b (the hub-side
route changes are counted from hub-a's log). Last, the active hub's operator is killed
(SIGKILL): the device keeps forwarding, so nothing may be lost and nothing may move.

    .venv/bin/python -m bench.failover [--repeats 3] [--json out.json]

Needs root, wireguard-go and nft; takes the lab lock (/tmp/wgkube-lab.lock), since the
lab's namespace, bridge and socket names are shared by everyone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgkube.kernel import Backend
from wgkube.operator.relay import DIRECT, RELAYING
from wgkube.testing.lab import SLOW, UNDERLAY, Lab, Node, sh
from wgkube.testing.netns import NetNS, PingStream

LOCK = Path("/tmp/wgkube-lab.lock")
PING_INTERVAL = 0.01
HOLD_DOWN = 3.0
"""Short for the bench (the default is 30 s) so each fault can start from the preferred hub."""
TARGET_MEDIAN_S = 1.0
TARGET_WORST_S = 2.0
FAULT_S = 3.0
"""How long each fault lasts: well past detection (0.6 s), well short of anything else."""
RANGE = "100.96.0.0/24"
MOVED = "traffic moved from hub"


@dataclass
class Fault:
    name: str
    inject: Callable[[Node], object]
    clear: Callable[[Node], object]
    moves: tuple[bool, bool] = (True, True)
    """Which spokes fail over (the others keep sending through the faulty hub)."""
    relays: bool = False
    """Whether the faulty hub relays to a spoke through the other hub."""


def _nft(node: Node, script: str) -> None:
    sh("ip", "netns", "exec", node.ns, "nft", script)


def _sysctl(node: Node, value: int) -> None:
    sh("ip", "netns", "exec", node.ns, "sysctl", "-qw", f"net.ipv4.ip_forward={value}")


DROP_UDP = (
    "add table inet wgkfault; "
    "add chain inet wgkfault in { type filter hook input priority -10; }; "
    "add chain inet wgkfault out { type filter hook output priority -10; }; "
    "add rule inet wgkfault in udp dport 51820 drop; "
    "add rule inet wgkfault out udp sport 51820 drop"
)

FAULTS = (
    Fault(
        "underlay link down",
        lambda n: NetNS(n.ns).ip("link", "set", "eth0", "down"),
        lambda n: NetNS(n.ns).ip("link", "set", "eth0", "up"),
    ),
    Fault(
        "WireGuard UDP dropped (nftables)",
        lambda n: _nft(n, DROP_UDP),
        lambda n: _nft(n, "delete table inet wgkfault"),
    ),
    Fault("IP forwarding off", lambda n: _sysctl(n, 0), lambda n: _sysctl(n, 1)),
)

SPOKE_1_UNDERLAY = f"{UNDERLAY}.11"
"""spoke-1's underlay address (`populate`: index 11): its WireGuard endpoint."""

DROP_TO_SPOKE_1 = (
    "add table inet wgkoneway; "
    "add chain inet wgkoneway out { type filter hook output priority -10; }; "
    f"add rule inet wgkoneway out ip daddr {SPOKE_1_UNDERLAY} udp sport 51820 drop"
)

ONE_WAY = Fault(
    "one-way loss, hub to spoke-1",
    lambda n: _nft(n, DROP_TO_SPOKE_1),
    lambda n: _nft(n, "delete table inet wgkoneway"),
    moves=(True, False),
    relays=True,
)
"""The active hub can no longer deliver to spoke-1 (its WireGuard UDP to spoke-1's
endpoint is dropped) while all else works: spoke-1 fails over, spoke-2 does not, and
the hub relays spoke-2's traffic for spoke-1 through the other hub."""

ALL_FAULTS = (*FAULTS, ONE_WAY)
"""What `make bench` measures. The system test runs FAULTS (each moves both spokes) and
ONE_WAY apart."""


@dataclass
class HaLab:
    """Two hubs (hub-a preferred: higher --hub-priority), two spokes."""

    lab: Lab
    hubs: list[Node] = field(default_factory=list)
    spokes: list[Node] = field(default_factory=list)

    def log(self, node: Node) -> str:
        path = self.lab.workdir / "logs" / f"{node.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def moves(self, spoke: Node) -> int:
        return self.log(spoke).count(MOVED)

    def hub_route_device(self, hub: Node, spoke: Node) -> str:
        """The device `hub`'s route to `spoke`'s overlay address points at."""
        out = NetNS(hub.ns).ip("-j", "route", "show", f"{spoke.wg_address}/32", "proto", "87")
        routes = json.loads(out.stdout or "[]")
        return str(routes[0]["dev"]) if len(routes) == 1 else ""

    def relay_changes(self, hub: Node) -> list[int]:
        """Relays started or ended by `hub` (its log), per spoke."""
        text = self.log(hub)
        return [
            text.count(f"{RELAYING} {s.name} ") + text.count(f"{DIRECT} {s.name} ")
            for s in self.spokes
        ]

    def route_device(self, spoke: Node) -> str:
        """The device the spoke's route to the hubs' range points at (`ip route`)."""
        out = NetNS(spoke.ns).ip("-j", "route", "show", RANGE, "proto", "87").stdout
        routes = json.loads(out or "[]")
        return str(routes[0]["dev"]) if len(routes) == 1 else ""

    async def on_hub(self, spoke: Node) -> str:
        """The hub whose key the device holding that route peers with ("" if none)."""
        ifname = self.route_device(spoke)
        if not ifname:
            return ""
        kernel = await self.lab.kernel(spoke)
        peers = await kernel.peers(ifname) or {}
        names = {self.lab.public_key(hub): hub.name for hub in self.hubs}
        held = [names.get(key.b64, "?") for key in peers]
        return held[0] if len(held) == 1 else ""

    async def wait_on(self, hub: Node, within: float) -> None:
        for spoke in self.spokes:

            async def there(spoke: Node = spoke) -> bool:
                return await self.on_hub(spoke) == hub.name

            await until(f"{spoke.name} sends through {hub.name}", there, within)


def _lock_holders() -> set[int]:
    """Pids holding (not waiting for) a flock on LOCK, from /proc/locks."""
    inode = str(LOCK.stat().st_ino)
    holders: set[int] = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == inode:
            holders.add(int(fields[4]))
    return holders


def _ancestors() -> set[int]:
    pids: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


@contextlib.contextmanager
def lab_lock() -> Iterator[None]:
    """The lab lock, unless a process we descend from holds it already (`flock LOCK
    pytest …` running the bench smoke test): waiting for it then would wait forever."""
    LOCK.touch(exist_ok=True)
    if _lock_holders() & _ancestors():
        yield
        return
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def until(what: str, probe: Callable[[], Awaitable[bool]], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out after {within:.0f}s: {what}")


def make_lab(workdir: Path, *, hold_down: float = HOLD_DOWN, backend: Backend = "userspace") -> Lab:
    env = {"WG_HUB_HOLD_DOWN": str(hold_down)}
    hub_args = ("--allowed-ips", RANGE, "--relay-hold-down", str(hold_down))
    return Lab(workdir, backend=backend, hub_args=hub_args, spoke_env=env)


async def start(
    workdir: Path, *, hold_down: float = HOLD_DOWN, backend: Backend = "userspace"
) -> HaLab:
    """Bridge, emulator, two hubs, two spokes (see `populate`). The caller holds the lab
    lock and calls `lab.clean()`. `backend` "kernel" is for the test VM (tests/ha)."""
    lab = make_lab(workdir, hold_down=hold_down, backend=backend)
    lab.make_bridge()
    lab.start_api(in_process=True)
    return await populate(lab)


async def populate(lab: Lab, *, mark_hub: Callable[[str], object] | None = None) -> HaLab:
    """Two hubs (hub-a preferred by --hub-priority) and two spokes on `lab`'s API; returns
    once both spokes reach each other through hub-a. `mark_hub` labels a hub Node as an
    administrator would (on a real cluster nodes may not label themselves)."""
    ha = HaLab(lab)
    ha.hubs = [
        Node("hub-a", "hub", 1, args=("--hub-priority", "10")),
        Node("hub-b", "hub", 2, address="100.96.0.253"),
    ]
    ha.spokes = [Node(f"spoke-{i}", "spoke", 10 + i) for i in (1, 2)]
    for node in (*ha.hubs, *ha.spokes):
        lab.add_node(node)
    for hub in ha.hubs:
        if mark_hub is not None:
            mark_hub(hub.name)
        lab.start_process(hub)
    for spoke in ha.spokes:
        lab.start_process(spoke)
    for spoke in ha.spokes:
        for hub in ha.hubs:
            await lab.wait_handshake(spoke, hub, within=60 * SLOW)
    await ha.wait_on(ha.hubs[0], within=30 * SLOW)
    a, b = ha.spokes
    result = await lab.ping(a, b.wg_address, count=3)
    if result.received != 3:
        raise RuntimeError(f"the spokes do not reach each other: {result.output}")
    return ha


async def streams(ha: HaLab) -> list[PingStream]:
    a, b = ha.spokes
    return [
        await PingStream.start(NetNS(a.ns), b.wg_address, interval=PING_INTERVAL),
        await PingStream.start(NetNS(b.ns), a.wg_address, interval=PING_INTERVAL),
    ]


async def finish(pings: list[PingStream]) -> list[int]:
    """Stop the streams after their last requests had time to come back; lost per stream."""
    for stream in pings:
        with contextlib.suppress(TimeoutError):
            await stream.wait_for_replies(len(stream.replies) + 20)
    for stream in pings:
        await stream.stop()
    return [len(stream.missing) for stream in pings]


async def one_fault(ha: HaLab, fault: Fault, *, hold_down: float) -> dict[str, Any]:
    """Inject on the active (preferred) hub, clear, wait for the failback; the figures."""
    hub = ha.hubs[0]
    await ha.wait_on(hub, within=hold_down + 30 * SLOW)
    before = [ha.moves(s) for s in ha.spokes]
    relays_before = ha.relay_changes(hub)
    pings = await streams(ha)
    await asyncio.sleep(1.0)
    fault.inject(hub)
    try:
        await asyncio.sleep(FAULT_S)
        moved = [await ha.on_hub(s) for s in ha.spokes]
        hub_routes = [ha.hub_route_device(hub, s) for s in ha.spokes]
    finally:
        fault.clear(hub)
    lost = await finish(pings)
    during = [ha.moves(s) - n for s, n in zip(ha.spokes, before, strict=True)]
    relays_during = _minus(ha.relay_changes(hub), relays_before)
    # Failback: after the hold-down, both spokes return to hub-a (and hub-a delivers to
    # spoke-1 directly again), losing nothing.
    pings = await streams(ha)
    await ha.wait_on(hub, within=2 * hold_down + 30 * SLOW)
    if fault.relays:
        await until(
            f"{hub.name} delivers directly again",
            lambda: _true(sum(_minus(ha.relay_changes(hub), relays_before)) >= 2),
            2 * hold_down + 30 * SLOW,
        )
    await asyncio.sleep(0.5)
    failback_lost = await finish(pings)
    total = [ha.moves(s) - n for s, n in zip(ha.spokes, before, strict=True)]
    return {
        "fault": fault.name,
        "lost": lost,
        "outage_s": [n * PING_INTERVAL for n in lost],
        "worst_s": max(lost) * PING_INTERVAL,
        "hubs_during_fault": moved,
        "hub_route_devices_during_fault": hub_routes,
        "route_changes_per_spoke": during,
        "route_changes_with_failback": total,
        "failback_lost": failback_lost,
        "hub_relay_changes": relays_during,
        "hub_relay_changes_with_failback": _minus(ha.relay_changes(hub), relays_before),
    }


def _minus(after: list[int], before: list[int]) -> list[int]:
    return [a - b for a, b in zip(after, before, strict=True)]


async def _true(value: bool) -> bool:
    return value


async def kill_operator(ha: HaLab) -> dict[str, Any]:
    """SIGKILL the active hub's operator (its process only: wireguard-go is a process of
    its own, as the kernel is for kernel WireGuard), and watch the traffic."""
    hub = ha.hubs[0]
    before = [ha.moves(s) for s in ha.spokes]
    pings = await streams(ha)
    await asyncio.sleep(1.0)
    os.kill(hub.pid, signal.SIGKILL)
    await asyncio.sleep(FAULT_S)
    lost = await finish(pings)
    hub.pid = 0
    return {
        "fault": "active hub's operator killed (SIGKILL)",
        "lost": lost,
        "route_changes_per_spoke": [
            ha.moves(s) - n for s, n in zip(ha.spokes, before, strict=True)
        ],
        "hubs_after": [await ha.on_hub(s) for s in ha.spokes],
    }


async def measure(
    workdir: Path, *, repeats: int = 3, hold_down: float = HOLD_DOWN
) -> dict[str, Any]:
    ha = await start(workdir, hold_down=hold_down)
    try:
        runs = [
            await one_fault(ha, fault, hold_down=hold_down)
            for _ in range(repeats)
            for fault in ALL_FAULTS
        ]
        killed = await kill_operator(ha)
        return {"repeats": repeats, "hold_down_s": hold_down, "faults": runs, "killed": killed}
    finally:
        await ha.lab.close_kernels()
        ha.lab.clean()


def run(repeats: int = 3) -> dict[str, Any]:
    """For bench.run: the measurement, or why it failed."""
    try:
        with lab_lock(), tempfile.TemporaryDirectory(prefix="wgkube-failover-") as tmp:
            return asyncio.run(measure(Path(tmp) / "lab", repeats=repeats))
    except Exception as exc:  # a benchmark reports a failure, it does not stop the others
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def verdicts(result: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(name, target, measured, met) per fault and for the operator kill."""
    out: list[tuple[str, str, str, bool]] = []
    by_fault: dict[str, list[dict[str, Any]]] = {}
    for record in result.get("faults", []):
        by_fault.setdefault(record["fault"], []).append(record)
    for name, records in by_fault.items():
        outages = [o for r in records for o in r["outage_s"]]
        median, worst = statistics.median(outages), max(outages)
        changes = max(
            c for r in records for c in [*r["route_changes_per_spoke"], *r["hub_relay_changes"]]
        )
        back = sum(n for r in records for n in r["failback_lost"])
        out.append(
            (
                f"failover, {name}",
                f"outage median <= {TARGET_MEDIAN_S:g}s, worst <= {TARGET_WORST_S:g}s, "
                "<= 1 route change per spoke (each spoke's, and the hub's for it)",
                f"median {median:.2f}s, worst {worst:.2f}s over {len(outages)} directions; "
                f"at most {changes} route change(s) per spoke; failback lost {back}",
                median <= TARGET_MEDIAN_S and worst <= TARGET_WORST_S and changes <= 1,
            )
        )
    killed = result.get("killed")
    if killed:
        lost = sum(killed["lost"])
        changes = sum(killed["route_changes_per_spoke"])
        out.append(
            (
                "active hub's operator killed",
                "0 lost, no failover",
                f"{lost} lost, {changes} route change(s)",
                lost == 0 and changes == 0,
            )
        )
    return out


def lines(result: dict[str, Any]) -> list[str]:
    if "faults" not in result:
        return [f"failover: not measured ({result.get('error')})  NOT MET"]
    out = [
        f"failover (2 hubs, 2 spokes pinging each other every {PING_INTERVAL * 1000:.0f} ms, "
        f"wireguard-go; {result['repeats']} run(s) per fault, "
        f"hold-down {result['hold_down_s']:g}s):"
    ]
    for record in result["faults"]:
        outages = ", ".join(f"{o * 1000:.0f}" for o in record["outage_s"])
        out.append(
            f"   {record['fault']:<34} outage {outages} ms (each direction); route changes "
            f"{record['route_changes_per_spoke']}; hub relays {record['hub_relay_changes']}; "
            f"failback lost {record['failback_lost']}"
        )
    for name, goal, measured, met in verdicts(result):
        out.append(f"   [{'MET' if met else 'NOT MET'}] {name}: target {goal}; measured {measured}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.repeats)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines(result)))
    return 0 if "faults" in result else 1


if __name__ == "__main__":
    sys.exit(main())

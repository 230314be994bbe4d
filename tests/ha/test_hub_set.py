"""The spoke's hub set driven tick by tick: memory kernel, a prober whose answers the test
decides, and a clock passed in. No timing: each tick is one call."""

from __future__ import annotations

import ipaddress

from tests.unit.builders import ep, iface, nets, priv, pub
from wgkube.desired.failover import FailoverPolicy
from wgkube.desired.model import DeviceSpec
from wgkube.domain.annotations import HubRecord
from wgkube.kernel.memory import MemoryKernel
from wgkube.kernel.probe import Prober
from wgkube.reconcile import Reconciler
from wgkube.spoke_agent.hubs import HubSet

RANGE = nets("100.96.0.0/24")
POLICY = FailoverPolicy(interval=0.2, misses=3, hold_down=2.0)


class ScriptedProber(Prober):
    """Answers exactly the probes of the interfaces not listed in `silent`."""

    def __init__(self) -> None:
        super().__init__()
        self.silent: set[str] = set()
        self.sent: dict[str, set[int]] = {}

    def open(self, ifname: str, address: ipaddress.IPv4Address) -> None:
        self.sent.setdefault(ifname, set())

    def close(self, ifname: str) -> None:
        self.sent.pop(ifname, None)

    def probing(self, ifname: str) -> bool:
        return ifname in self.sent

    def send(self, ifname: str, seq: int) -> None:
        if ifname not in self.silent:
            self.sent[ifname].add(seq)

    def answered(self, ifname: str, seq: int) -> bool:
        return seq in self.sent.get(ifname, set())


def hub(name: str, priority: int = 0) -> HubRecord:
    return HubRecord(
        node=name,
        public_key=pub(name),
        endpoint=ep("203.0.113.1:51820" if name == "hub-a" else "203.0.113.2:51820"),
        allowed_ips=RANGE,
        priority=priority,
    )


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def hub_set() -> tuple[
    HubSet, MemoryKernel, ScriptedProber, Clock, list[tuple[str, str, str, bool]]
]:
    kernel = MemoryKernel()
    prober, clock = ScriptedProber(), Clock()
    moves: list[tuple[str, str, str, bool]] = []
    device = DeviceSpec(
        name="wg0", private_key=priv("s"), listen_port=51820, addresses=(iface("100.96.0.2/32"),)
    )
    hubs = HubSet(
        kernel=kernel,
        reconciler=Reconciler(kernel, keep_refused=True),
        device=device,
        policy=POLICY,
        prober=prober,
        clock=clock,
        on_failover=lambda old, new, why, down: moves.append(
            (old.node if old else "", new.node, why, down)
        ),
    )
    hubs.set_hubs((hub("hub-b"), hub("hub-a", priority=1)))
    return hubs, kernel, prober, clock, moves


async def ticks(hubs: HubSet, clock: Clock, seq: int, count: int) -> int:
    for _ in range(count):
        seq += 1
        clock.now += POLICY.interval
        await hubs.tick(seq)
    return seq


async def routes(kernel: MemoryKernel, ifname: str) -> set[str]:
    return {str(n) for n in (await kernel.observe(ifname)).routes}


async def test_the_preferred_hub_carries_the_routes_and_both_devices_hold_the_range() -> None:
    hubs, kernel, _, _, moves = hub_set()
    await hubs.reconcile()
    assert hubs.slots == {"hub-a": 0, "hub-b": 1}
    assert await routes(kernel, "wg0") == {"100.96.0.0/24"}
    assert await routes(kernel, "wg0-1") == set()
    for ifname, key in (("wg0", pub("hub-a")), ("wg0-1", pub("hub-b"))):
        peers = (await kernel.observe(ifname)).peers
        assert set(peers) == {key}
        assert peers[key].allowed_ips == set(RANGE)
    assert moves == [("", "hub-a", "the most preferred hub not known to be down", False)]


async def test_three_missed_probes_move_the_route_once_and_the_hold_down_brings_it_back() -> None:
    hubs, kernel, prober, clock, moves = hub_set()
    await hubs.reconcile()
    seq = await ticks(hubs, clock, 0, 5)
    writes = kernel.writes
    prober.silent.add("wg0")
    seq = await ticks(hubs, clock, seq, 3)
    assert hubs.active == "hub-a", "two misses judged, not yet three"
    seq = await ticks(hubs, clock, seq, 1)
    assert hubs.active == "hub-b"
    assert await routes(kernel, "wg0-1") == {"100.96.0.0/24"}
    assert await routes(kernel, "wg0") == set()
    assert kernel.writes == writes + 1, "one route replace, nothing else"
    assert moves[-1][:2] == ("hub-a", "hub-b")
    assert "hub hub-a is down" in moves[-1][2]
    assert moves[-1][3] is True, "a failover: the hub it left was down"
    seq = await ticks(hubs, clock, seq, 20)
    assert len(moves) == 2, "no flapping while hub-a stays down"

    prober.silent.clear()  # recovered: back only after 2 s (10 ticks) without a miss
    seq = await ticks(hubs, clock, seq, 10)
    assert hubs.active == "hub-b"
    seq = await ticks(hubs, clock, seq, 2)
    assert hubs.active == "hub-a"
    assert "hold-down" in moves[-1][2]
    assert moves[-1][3] is False, "a failback: the hub it left still forwards"
    assert await routes(kernel, "wg0") == {"100.96.0.0/24"}
    assert len(moves) == 3


async def test_a_hub_that_flaps_within_the_hold_down_never_takes_the_traffic_back() -> None:
    hubs, _, prober, clock, moves = hub_set()
    await hubs.reconcile()
    seq = await ticks(hubs, clock, 0, 3)
    for _ in range(6):
        prober.silent.add("wg0")
        seq = await ticks(hubs, clock, seq, 4)
        prober.silent.clear()
        seq = await ticks(hubs, clock, seq, 6)  # 1.2 s of answers: short of the hold-down
    assert [m[:2] for m in moves] == [("", "hub-a"), ("hub-a", "hub-b")]


async def test_nothing_moves_when_no_hub_answers() -> None:
    hubs, _, prober, clock, moves = hub_set()
    await hubs.reconcile()
    prober.silent.update({"wg0", "wg0-1"})
    await ticks(hubs, clock, 0, 20)
    assert hubs.active == "hub-a"
    assert len(moves) == 1

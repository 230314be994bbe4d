"""A hub's relays driven tick by tick: memory kernel, echoes whose answers the test decides,
and a clock passed in. No timing: each tick is one call."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address

from tests.ha.test_hub_set import Clock, ScriptedProber
from tests.unit.builders import ep, iface, nets, priv, pub
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.desired.relay import RelayPolicy
from wgkube.domain.annotations import HubRecord
from wgkube.kernel.memory import MemoryKernel
from wgkube.operator.relay import HubRelay
from wgkube.reconcile import Reconciler

POLICY = RelayPolicy(interval=0.2, misses=3, startup_misses=10, hold_down=2.0)
DEVICE = DeviceSpec(
    name="wg0", private_key=priv("hub-a"), listen_port=51820, addresses=(iface("100.96.0.254/32"),)
)
HUB_B = HubRecord(
    node="hub-b",
    public_key=pub("hub-b"),
    endpoint=ep("203.0.113.2:51820"),
    allowed_ips=nets("100.96.0.0/24"),
    addresses=nets("100.96.0.253/32"),
    relay_ports=(("hub-a", 51821),),
)
SPOKE_1, SPOKE_2 = IPv4Address("100.96.0.11"), IPv4Address("100.96.0.12")


@dataclass
class ScriptedRelay(HubRelay):
    """Echoes answered unless (device, spoke) is in `silent`; no sockets."""

    silent: set[tuple[str, IPv4Address]] = field(default_factory=set)

    def _open(self) -> None:
        for link in self.links:
            self.prober.open(link.device.name, IPv4Address("100.96.0.254"))

    def _send(self, ifname: str, target: IPv4Address, seq: int, path: int) -> bool:
        if (ifname, target) not in self.silent:
            self._answers.add((seq, path, target))
        return True


def desired(*, with_hub: bool = True) -> DesiredState:
    peers = {
        pub("spoke-1"): PeerSpec(pub("spoke-1"), None, nets("100.96.0.11/32")),
        pub("spoke-2"): PeerSpec(pub("spoke-2"), None, nets("100.96.0.12/32")),
    }
    if with_hub:
        peers[pub("hub-b")] = PeerSpec(pub("hub-b"), HUB_B.endpoint, nets("100.96.0.253/32"))
    routes = frozenset(n for p in peers.values() for n in p.allowed_ips)
    return DesiredState(device=DEVICE, peers=peers, routes=routes)


def relay(kernel: MemoryKernel, clock: Clock, prober: ScriptedProber) -> ScriptedRelay:
    return ScriptedRelay(
        kernel,
        Reconciler(kernel),
        DEVICE,
        "hub-a",
        POLICY,
        names=lambda: {pub("spoke-1"): "spoke-1", pub("spoke-2"): "spoke-2"},
        clock=clock,
        prober=prober,
    )


async def routes(kernel: MemoryKernel, ifname: str) -> set[str]:
    return {str(n) for n in (await kernel.observe(ifname)).routes}


async def ticks(hub: ScriptedRelay, clock: Clock, seq: int, count: int) -> int:
    hub._open()
    for _ in range(count):
        seq += 1
        clock.now += POLICY.interval
        await hub.tick(seq)
    return seq


async def started() -> tuple[ScriptedRelay, MemoryKernel, Clock, ScriptedProber]:
    kernel, clock, prober = MemoryKernel(), Clock(), ScriptedProber()
    hub = relay(kernel, clock, prober)
    hub.set_hubs((HUB_B,))
    await hub.reconcile(desired(), None)
    return hub, kernel, clock, prober


async def test_one_hub_makes_no_relay_interface_and_writes_what_the_main_device_alone_would() -> (
    None
):
    kernel, alone = MemoryKernel(), MemoryKernel()
    hub = relay(kernel, Clock(), ScriptedProber())
    hub.set_hubs(())
    state = desired(with_hub=False)
    ops = await hub.reconcile(state, None)
    assert ops == await Reconciler(alone).reconcile(state, None)
    assert not (await kernel.observe("wg0-r1")).exists
    assert kernel.writes == alone.writes
    assert hub.spokes == {}, "nothing to echo to with one hub"


async def test_no_announcement_at_all_is_one_hub_and_a_deleted_one_keeps_the_last_set() -> None:
    kernel = MemoryKernel()
    hub = relay(kernel, Clock(), ScriptedProber())
    assert not hub.alone(), "before the announcement is read, nothing is assumed"
    hub.announced_none()
    await hub.reconcile(desired(with_hub=False), None)
    assert hub.alone(), "an announcement that is not there names no other hub"
    assert not (await kernel.observe("wg0-r1")).exists
    told, kernel, _, _ = await started()
    told.announced_none()
    assert [link.hub for link in told.links] == ["hub-b"]
    assert (await kernel.observe("wg0-r1")).exists


async def test_a_second_hub_gets_a_relay_interface_holding_the_range_and_its_own_address() -> None:
    hub, kernel, _, _ = await started()
    relay_dev = await kernel.observe("wg0-r1")
    assert relay_dev.exists
    assert set(relay_dev.peers) == {pub("hub-b")}
    assert relay_dev.peers[pub("hub-b")].allowed_ips == set(nets("100.96.0.0/24"))
    assert await routes(kernel, "wg0-r1") == {"100.96.0.253/32"}
    assert await routes(kernel, "wg0") == {"100.96.0.11/32", "100.96.0.12/32"}
    writes = kernel.writes
    assert await hub.reconcile(desired(), None) == ()
    assert kernel.writes == writes, "an unchanged state writes nothing"


async def test_a_spoke_that_stops_answering_directly_is_relayed_once_and_back_after_hold_down() -> (
    None
):
    hub, kernel, clock, _ = await started()
    seq = await ticks(hub, clock, 0, 5)
    writes = kernel.writes
    hub.silent.add(("wg0", SPOKE_1))
    seq = await ticks(hub, clock, seq, 3)
    assert hub.relayed == {}, "two misses judged, not yet three"
    seq = await ticks(hub, clock, seq, 1)
    assert hub.relayed == {pub("spoke-1"): "hub-b"}
    assert await routes(kernel, "wg0-r1") == {"100.96.0.253/32", "100.96.0.11/32"}
    assert await routes(kernel, "wg0") == {"100.96.0.12/32"}
    assert kernel.writes == writes + 1, "one route replace, nothing else"
    seq = await ticks(hub, clock, seq, 20)
    assert hub.changes == 1, "no flapping while it stays unreachable"
    # The loop's next reconcile keeps the relay (the relays are its input).
    assert await hub.reconcile(desired(), None) == ()

    hub.silent.clear()  # recovered: back only after 2 s (10 ticks) without a miss
    seq = await ticks(hub, clock, seq, 10)
    assert hub.relayed == {pub("spoke-1"): "hub-b"}
    seq = await ticks(hub, clock, seq, 2)
    assert hub.relayed == {}
    assert await routes(kernel, "wg0") == {"100.96.0.11/32", "100.96.0.12/32"}
    assert hub.changes == 2


async def test_no_relay_through_a_hub_whose_relay_interface_does_not_answer() -> None:
    hub, kernel, clock, prober = await started()
    seq = await ticks(hub, clock, 0, 5)
    prober.silent.add("wg0-r1")
    hub.silent.add(("wg0", SPOKE_1))
    await ticks(hub, clock, seq, 20)
    assert hub.relayed == {}
    assert "100.96.0.11/32" in await routes(kernel, "wg0")


async def test_no_relay_to_a_spoke_that_no_hub_reaches() -> None:
    hub, _, clock, _ = await started()
    seq = await ticks(hub, clock, 0, 5)
    hub.silent |= {("wg0", SPOKE_1), ("wg0-r1", SPOKE_1)}
    await ticks(hub, clock, seq, 20)
    assert hub.relayed == {}


async def test_a_spoke_that_never_answered_is_never_relayed() -> None:
    hub, _, clock, _ = await started()
    hub.silent.add(("wg0", SPOKE_2))  # an agent from before echoes
    await ticks(hub, clock, 0, 100)
    assert hub.relayed == {}


async def test_a_restart_adopts_the_relays_in_place_without_a_write() -> None:
    hub, kernel, clock, _ = await started()
    seq = await ticks(hub, clock, 0, 5)
    hub.silent.add(("wg0", SPOKE_1))
    await ticks(hub, clock, seq, 4)
    assert hub.relayed == {pub("spoke-1"): "hub-b"}
    writes = kernel.writes

    again = relay(kernel, clock, ScriptedProber())
    # Before the announcement is read, the relay interface's routes are left alone.
    assert await again.reconcile(desired(), None) == ()
    again.set_hubs((HUB_B,))
    assert await again.reconcile(desired(), None) == ()
    assert kernel.writes == writes
    assert again.relayed == {pub("spoke-1"): "hub-b"}
    assert await routes(kernel, "wg0-r1") == {"100.96.0.253/32", "100.96.0.11/32"}


async def test_back_to_one_hub_the_routes_return_and_the_relay_interface_goes() -> None:
    hub, kernel, clock, _ = await started()
    seq = await ticks(hub, clock, 0, 5)
    hub.silent.add(("wg0", SPOKE_1))
    await ticks(hub, clock, seq, 4)
    hub.set_hubs(())
    await hub.reconcile(desired(with_hub=False), None)
    assert not (await kernel.observe("wg0-r1")).exists
    assert await routes(kernel, "wg0") == {"100.96.0.11/32", "100.96.0.12/32"}

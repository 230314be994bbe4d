"""The hub loop reports what the kernel refused as Events, once per distinct fault."""

from __future__ import annotations

from tests.support.faults import Fault, FaultyKernel
from tests.unit.builders import KEYS, iface, net, node, priv, pub
from wgkube.desired.model import CONFLICT, INVALID, DeviceSpec, Rejection
from wgkube.kernel.memory import MemoryKernel
from wgkube.operator.loop import HubLoop
from wgkube.operator.registry import PeerRegistry
from wgkube.reconcile import KERNEL_REJECTED, Reconciler

DEVICE = DeviceSpec(name="wg0", private_key=priv("hub"), addresses=(iface("100.96.0.1/24"),))


def peer_node(name: str, key: int, allowed: str) -> dict[str, object]:
    annotations = {KEYS.public_key: pub(key).b64, KEYS.allowed_ips: allowed}
    return node(name, annotations, labels={KEYS.peer: "true"})


async def nothing() -> None:
    return None


def make_loop(*faults: Fault) -> tuple[HubLoop, list[Rejection], PeerRegistry]:
    reported: list[Rejection] = []

    async def report(rejection: Rejection) -> None:
        reported.append(rejection)

    registry = PeerRegistry(KEYS, "hub", max_prefixes=4)
    kernel = FaultyKernel(MemoryKernel(), faults)
    loop = HubLoop(DEVICE, Reconciler(kernel), registry, report, nothing, debounce=0)
    loop.listed.set()  # as after the first complete list of Nodes
    return loop, reported, registry


async def test_a_refused_peer_gets_one_event_and_the_others_are_programmed() -> None:
    loop, reported, registry = make_loop(
        Fault("peer", net("10.66.0.0/16")), Fault("route", net("10.77.0.0/16"), error="conflict")
    )
    registry.observe(peer_node("good", 1, "10.0.1.0/24"))
    registry.observe(peer_node("refused", 2, "10.66.0.0/24"))
    registry.observe(peer_node("foreign-route", 3, "10.77.0.0/24"))
    registry.observe(
        peer_node("too-many", 4, "10.5.1.0/24,10.5.2.0/24,10.5.3.0/24,10.5.4.0/24,10.5.5.0/24")
    )
    await loop.reconcile_once()
    await loop.reconcile_once()  # a resync: nothing new to say
    by_node = {r.node: r for r in reported}
    assert len(reported) == len(by_node) == 3
    assert by_node["refused"].reason == KERNEL_REJECTED
    assert "10.66.0.0/24" in by_node["refused"].message
    assert by_node["foreign-route"].reason == CONFLICT
    assert "cannot add route 10.77.0.0/24: route" in by_node["foreign-route"].message
    assert by_node["too-many"].reason == INVALID
    assert "5 prefixes; at most 4" in by_node["too-many"].message
    assert loop.ready

    observed = await loop.reconciler.kernel.observe("wg0")
    assert set(observed.peers) == {pub(1)}
    assert observed.routes == frozenset({net("10.0.1.0/24")})


async def test_fixing_the_refused_value_brings_the_peer_in() -> None:
    loop, reported, registry = make_loop(Fault("peer", net("10.66.0.0/16")))
    registry.observe(peer_node("refused", 2, "10.66.0.0/24"))
    await loop.reconcile_once()
    assert [r.node for r in reported] == ["refused"]
    registry.observe(peer_node("refused", 2, "10.6.0.0/24"))
    await loop.reconcile_once()
    observed = await loop.reconciler.kernel.observe("wg0")
    assert set(observed.peers) == {pub(2)}
    assert loop.reconciler.refused == {}
    assert len(reported) == 1


async def test_a_resync_retries_a_refusal_and_says_nothing_new_when_it_is_refused_again() -> None:
    loop, reported, registry = make_loop(Fault("peer", net("10.66.0.0/16")))
    registry.observe(peer_node("refused", 2, "10.66.0.0/24"))
    await loop.reconcile_once()
    loop.reconciler.retry_refused()  # what a periodic resync does
    await loop.reconcile_once()
    assert [r.node for r in reported] == ["refused"]
    assert set(loop.reconciler.refused) == {pub(2)}

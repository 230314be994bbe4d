"""One Node's change costs the same kernel work at any N: between resyncs the hub diffs
only what changed against what it applied, reads nothing back, and a resync still
repairs drift made by hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.builders import KEYS, iface, net, node, priv, pub
from wgkube.desired.model import DesiredState, DeviceSpec
from wgkube.diff.cache import ObservedCache
from wgkube.diff.model import (
    AddRoute,
    CreateLink,
    ObservedState,
    Operation,
    RemovePeer,
    RemoveRoute,
    UpsertPeer,
)
from wgkube.kernel.memory import MemoryKernel
from wgkube.operator.loop import HubLoop
from wgkube.operator.registry import PeerRegistry
from wgkube.reconcile import Reconciler

DEVICE = DeviceSpec(name="wg0", private_key=priv("hub"), addresses=(iface("100.96.0.1/16"),))


def peer_node(i: int, allowed: str, version: int) -> dict[str, object]:
    body = node(
        f"n{i}",
        {KEYS.public_key: pub(i).b64, KEYS.allowed_ips: allowed},
        labels={KEYS.peer: "true"},
    )
    body["metadata"]["resourceVersion"] = str(version)
    return body


def allowed(i: int, base: int = 10) -> str:
    return f"{base}.{i // 250}.{i % 250}.0/24"


class CountingKernel(MemoryKernel):
    """The memory kernel, counting reads and the operations applied."""

    def __init__(self) -> None:
        super().__init__()
        self.observes = 0
        self.ops = 0

    async def observe(self, ifname: str, *, device_only: bool = False) -> ObservedState:
        self.observes += 1
        return await super().observe(ifname, device_only=device_only)

    async def apply(self, ifname: str, ops: Sequence[Operation]) -> None:
        self.ops += len(ops)
        await super().apply(ifname, ops)


async def nothing() -> None:
    return None


async def report(_: object) -> None:
    return None


async def hub_with(n: int) -> tuple[HubLoop, CountingKernel, PeerRegistry]:
    kernel = CountingKernel()
    registry = PeerRegistry(KEYS, "hub")
    for i in range(n):
        registry.observe(peer_node(i, allowed(i), 1))
    loop = HubLoop(DEVICE, Reconciler(kernel), registry, report, nothing, debounce=0)
    loop.listed.set()
    await loop.reconciler.reconcile(DesiredState(DEVICE))  # the device first, as Hub.start
    await loop.reconcile_once(full=True)  # start-up: read the kernel, write everything
    observed = await kernel.observe("wg0")
    assert len(observed.peers) == n
    kernel.observes = kernel.ops = 0
    return loop, kernel, registry


@pytest.mark.parametrize("n", [100, 1000, 10_000])
async def test_one_change_costs_three_kernel_operations_and_no_read_at_any_n(n: int) -> None:
    loop, kernel, registry = await hub_with(n)
    registry.observe(peer_node(7, allowed(7, base=11), 2))
    await loop.reconcile_once(full=False)
    # The peer's allowed-ips, the new route, the old route: nothing about the others.
    assert (kernel.ops, kernel.observes) == (3, 0)
    observed = await kernel.observe("wg0")
    assert observed.peers[pub(7)].allowed_ips == frozenset({net(allowed(7, base=11))})
    assert net(allowed(7, base=11)) in observed.routes
    assert net(allowed(7)) not in observed.routes
    assert len(observed.peers) == n


@pytest.mark.parametrize("n", [100, 1000, 10_000])
async def test_a_new_node_and_a_deleted_node_each_cost_the_same_at_any_n(n: int) -> None:
    loop, kernel, registry = await hub_with(n)
    registry.observe(peer_node(n + 1, "172.16.0.0/24", 2))
    await loop.reconcile_once(full=False)
    assert (kernel.ops, kernel.observes) == (2, 0)  # the peer, its route
    registry.observe(peer_node(3, allowed(3), 3), deleted=True)
    await loop.reconcile_once(full=False)
    assert (kernel.ops, kernel.observes) == (4, 0)  # and the route, the peer gone
    observed = await kernel.observe("wg0")
    assert pub(3) not in observed.peers
    assert pub(n + 1) in observed.peers


async def test_drift_made_by_hand_is_repaired_by_the_next_resync_and_not_before() -> None:
    loop, kernel, registry = await hub_with(50)
    # By hand: a route deleted, a peer removed (`ip route del`, `wg set wg0 peer … remove`).
    await kernel.apply("wg0", [RemoveRoute(net(allowed(1))), RemovePeer(pub(2))])
    registry.observe(peer_node(9, allowed(9, base=11), 2))
    await loop.reconcile_once(full=False)  # an event: diffed against the cache only
    observed = await kernel.observe("wg0")
    assert net(allowed(1)) not in observed.routes
    assert pub(2) not in observed.peers
    await loop.reconcile_once(full=True)  # the resync
    observed = await kernel.observe("wg0")
    assert net(allowed(1)) in observed.routes
    assert pub(2) in observed.peers
    assert net(allowed(9, base=11)) in observed.routes


async def test_the_running_loop_repairs_drift_within_one_resync_interval() -> None:
    kernel = CountingKernel()
    registry = PeerRegistry(KEYS, "hub")
    for i in range(20):
        registry.observe(peer_node(i, allowed(i), 1))
    repaired = asyncio.Event()

    class Watch:
        def reconciled(self, seconds: float, ops: Sequence[Operation] | None) -> None:
            if ops and any(isinstance(op, AddRoute | UpsertPeer) for op in ops):
                repaired.set()

    loop = HubLoop(
        DEVICE,
        Reconciler(kernel, observer=Watch()),
        registry,
        report,
        nothing,
        debounce=0,
        resync_interval=0.2,
    )
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(10):
            await repaired.wait()  # the start-up reconcile wrote the 20 peers
            repaired.clear()
            await kernel.apply("wg0", [RemoveRoute(net(allowed(4)))])
            await repaired.wait()  # nothing woke the loop: only the resync can
        observed = await kernel.observe("wg0")
        assert net(allowed(4)) in observed.routes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


KEYS_POOL = [pub(i) for i in range(4)]
NETS_POOL = [net(t) for t in ("10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24", "fd00::/64")]
operations = st.lists(
    st.one_of(
        st.builds(
            UpsertPeer,
            public_key=st.sampled_from(KEYS_POOL),
            allowed_ips=st.one_of(
                st.none(),
                st.lists(st.sampled_from(NETS_POOL), max_size=3, unique=True).map(tuple),
            ),
            persistent_keepalive=st.sampled_from([None, 0, 25]),
        ),
        st.builds(RemovePeer, st.sampled_from(KEYS_POOL)),
        st.builds(AddRoute, st.sampled_from(NETS_POOL)),
        st.builds(RemoveRoute, st.sampled_from(NETS_POOL)),
    ),
    max_size=15,
)


@settings(max_examples=200, deadline=None)
@given(operations, operations)
def test_the_cache_replays_operations_as_the_kernel_applies_them(
    first: list[Operation], then: list[Operation]
) -> None:
    async def check() -> None:
        kernel = MemoryKernel()
        await kernel.apply("wg0", [CreateLink("wg0"), *first])
        cache = ObservedCache(await kernel.observe("wg0"))
        await kernel.apply("wg0", then)
        assert cache.replay(then)
        assert cache.state() == await kernel.observe("wg0")

    asyncio.run(check())

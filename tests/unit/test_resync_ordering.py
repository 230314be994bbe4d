"""A kernel resync reads and diffs 10,000 peers: that runs beside the change path, not in
front of it, and what it read before a change was applied never undoes that change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from tests.unit.builders import KEYS, net, pub
from tests.unit.test_scale_counts import (
    DEVICE,
    CountingKernel,
    allowed,
    hub_with,
    nothing,
    peer_node,
    report,
)
from wgkube.diff.model import ObservedState, RemovePeer, RemoveRoute
from wgkube.operator.loop import HubLoop
from wgkube.operator.registry import PeerRegistry
from wgkube.reconcile import Reconciler


class GatedKernel(CountingKernel):
    """The memory kernel whose reads, once `hold` is set, return what they saw when they
    began only after `release`: a slow read of a large device."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def observe(self, ifname: str, *, device_only: bool = False) -> ObservedState:
        seen = await super().observe(ifname, device_only=device_only)
        if self.hold:
            self.reading.set()
            await self.release.wait()
        return seen


async def until(check: Callable[[], bool | Awaitable[bool]]) -> None:
    async with asyncio.timeout(10):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.005)


async def test_a_change_applied_during_a_resync_read_is_not_undone_by_the_resync() -> None:
    loop, kernel, registry = await hub_with(20)
    reconciler = loop.reconciler
    # By hand, before the resync reads: peer 7 and its route are gone (drift to repair).
    await kernel.apply("wg0", [RemovePeer(pub(7)), RemoveRoute(net(allowed(7)))])
    journal = reconciler.start_journal()
    snapshot = loop._desired.state() if loop._desired else None
    assert snapshot is not None
    read = await reconciler.read_for_resync(snapshot, journal)
    # Meanwhile peer 7 moves to another prefix, applied by the change path.
    registry.observe(peer_node(7, allowed(7, base=11), 2))
    await loop.reconcile_once(full=False)
    assert loop._desired is not None
    finished = await reconciler.finish_resync(loop._desired.state(), read, {pub(7)})
    assert finished is not None
    observed = await kernel.observe("wg0")
    # The read had peer 7 missing and the diff made for the older desired state would
    # have put back 10.0.7.0/24: the peer keeps its new prefix, the old one stays gone.
    assert observed.peers[pub(7)].allowed_ips == frozenset({net(allowed(7, base=11))})
    assert net(allowed(7, base=11)) in observed.routes
    assert net(allowed(7)) not in observed.routes


async def test_drift_elsewhere_is_repaired_by_a_resync_read_before_a_change() -> None:
    loop, kernel, registry = await hub_with(20)
    reconciler = loop.reconciler
    await kernel.apply("wg0", [RemovePeer(pub(3)), RemoveRoute(net(allowed(4)))])
    journal = reconciler.start_journal()
    assert loop._desired is not None
    read = await reconciler.read_for_resync(loop._desired.state(), journal)
    registry.observe(peer_node(9, allowed(9, base=11), 2))
    await loop.reconcile_once(full=False)
    finished = await reconciler.finish_resync(loop._desired.state(), read, {pub(9)})
    assert finished is not None
    observed = await kernel.observe("wg0")
    assert pub(3) in observed.peers
    assert net(allowed(4)) in observed.routes
    assert net(allowed(9, base=11)) in observed.routes
    assert net(allowed(9)) not in observed.routes
    assert len(observed.peers) == 20


async def test_a_resync_read_is_dropped_when_a_reconcile_failed_meanwhile() -> None:
    loop, kernel, registry = await hub_with(5)
    reconciler = loop.reconciler
    journal = reconciler.start_journal()
    assert loop._desired is not None
    read = await reconciler.read_for_resync(loop._desired.state(), journal)
    await kernel.delete("wg0")  # the device goes: the next change fails
    registry.observe(peer_node(2, allowed(2, base=11), 2))
    with contextlib.suppress(Exception):
        await loop.reconcile_once(full=False)
    assert await reconciler.finish_resync(loop._desired.state(), read, {pub(2)}) is None


async def test_the_running_loop_applies_a_change_while_a_resync_reads_the_kernel() -> None:
    kernel = GatedKernel()
    registry = PeerRegistry(KEYS, "hub")
    for i in range(20):
        registry.observe(peer_node(i, allowed(i), 1))
    loop = HubLoop(
        DEVICE,
        Reconciler(kernel),
        registry,
        report,
        nothing,
        debounce=0,
        kernel_resync_interval=0.1,
    )
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: loop.stats.reconciles >= 1)  # start-up wrote the 20 peers
        await kernel.apply("wg0", [RemoveRoute(net(allowed(4)))])  # drift by hand
        kernel.hold = True
        async with asyncio.timeout(10):
            await kernel.reading.wait()  # the resync is reading, and holds on
        kernel.hold = False
        registry.observe(peer_node(7, allowed(7, base=11), 2))
        loop.wake()

        async def applied() -> bool:
            observed = await kernel.observe("wg0")
            return net(allowed(7, base=11)) in observed.routes

        await until(applied)  # while the read is still held
        assert not kernel.release.is_set()
        kernel.release.set()

        async def repaired() -> bool:
            observed = await kernel.observe("wg0")
            return net(allowed(4)) in observed.routes

        await until(repaired)
        observed = await kernel.observe("wg0")
        assert observed.peers[pub(7)].allowed_ips == frozenset({net(allowed(7, base=11))})
        assert net(allowed(7)) not in observed.routes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""The hub's single reconcile loop: woken by events, debounced, plus a periodic resync."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wgkube.desired.hub import HubDesired, seniority
from wgkube.desired.model import INVALID, DeviceSpec, Rejection
from wgkube.desired.protected import Protected
from wgkube.domain.annotations import HubRecord, PeerRecord
from wgkube.domain.errors import WgKubeError
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint, IPNetwork
from wgkube.operator.registry import PeerRegistry
from wgkube.operator.relay import HubRelay
from wgkube.reconcile import Reconciler, ResyncRead

log = logging.getLogger("wgkube.hub")

Reporter = Callable[[Rejection], Awaitable[None]]
Relister = Callable[[], Awaitable[None]]
Guard = tuple[tuple[Protected, ...], dict[PublicKey, Endpoint]]
"""What no allowed-ips may cover, and the endpoints WireGuard has learned."""
Guarder = Callable[[], Awaitable[Guard]]


Clock = Callable[[], float]
Changes = dict[str, PeerRecord | None]


@dataclass
class Debouncer:
    """When to apply what the watch delivered: at once for an isolated change, after
    `interval` for what follows it.

    A change is isolated when nothing happened for `interval` before it (leading edge):
    it is applied at once. Changes that arrive while that reconcile runs, or within
    `interval` of the previous change, wait `interval` and go in one reconcile (the
    burst of a thousand Nodes being created is gathered, a single edit is not delayed).
    """

    interval: float
    _last: float = float("-inf")
    """When the newest change arrived."""
    _pending: bool = False
    _leading: bool = False

    def event(self, now: float) -> None:
        if not self._pending:
            self._pending = True
            self._leading = now - self._last >= self.interval
        self._last = now

    def delay(self) -> float:
        """Seconds to wait before applying what is pending."""
        if not self._pending or self._leading:
            return 0.0
        return self.interval

    def taken(self) -> None:
        """What was pending is being applied: what arrives from now on is new."""
        self._pending = False
        self._leading = False


@dataclass
class LoopStats:
    reconciles: int = 0
    operations: int = 0
    failures: int = 0
    last_success: float = 0.0
    last_duration: float = 0.0
    peers: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_nodes: list[str] = field(default_factory=list)


@dataclass
class HubLoop:
    """Handlers only touch the registry and call `wake()`; this loop does everything else.

    The loop reconciles nothing before its own first complete list of Nodes, so an
    empty registry at start-up cannot wipe the peers the kernel already has.
    """

    device: DeviceSpec
    reconciler: Reconciler
    registry: PeerRegistry
    report: Reporter
    relist: Relister
    """An authoritative list of the Nodes into the registry, at every resync."""
    first_list: Callable[[], Awaitable[object]] | None = None
    """Returns once the first complete list is in the registry, made elsewhere (the Hub's
    peer follower, which retries it); None: the loop lists itself (relist) until it can."""
    debounce: float = 0.2
    resync_interval: float = 600.0
    """Seconds between API relists (each followed by a kernel resync)."""
    kernel_resync_interval: float | None = None
    """Seconds between kernel resyncs (read back, recompute, repair drift); None: only
    with the relist."""
    persistent_keepalive: int = 0
    guard: Guarder | None = None
    """Reads the protected set; called before the first reconcile and at every resync."""
    peer_cidrs: tuple[IPNetwork, ...] | None = None
    hubs: tuple[HubRecord, ...] = ()
    """The announced hubs (set by the Hub from the announcement): peers on their addresses."""
    relay: HubRelay | None = None
    """With several hubs: the relays, which split the routes between the main device and
    the relay interfaces (None: the main device alone, as with one hub)."""
    guarded: Guard = field(default_factory=lambda: ((), {}))
    listed: asyncio.Event = field(default_factory=asyncio.Event)
    stats: LoopStats = field(default_factory=LoopStats)
    clock: Clock = time.monotonic
    """Times the changes for the debounce (a fake one in tests)."""
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep
    """Waits out the debounce (a recording one in tests)."""
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _debouncer: Debouncer | None = None
    _desired: HubDesired | None = None
    _reported: dict[str, Rejection] = field(default_factory=dict)
    _healthy: bool = False
    _reading: asyncio.Task[tuple[HubDesired, ResyncRead]] | None = None
    """The resync reading the kernel, while it runs."""
    _batches: list[Changes] | None = None
    """The registry's changes taken since that resync took its copy of the Nodes (None:
    the state was recomputed in full meanwhile, its copy is stale)."""

    def wake(self) -> None:
        """A Node changed: apply it at once if nothing else happened for a debounce
        interval before it, else gather it with what follows (Debouncer)."""
        self.debouncer.event(self.clock())
        self._wakeup.set()

    @property
    def debouncer(self) -> Debouncer:
        if self._debouncer is None:
            self._debouncer = Debouncer(self.debounce)
        return self._debouncer

    @property
    def ready(self) -> bool:
        return self.listed.is_set() and self._healthy

    async def run(self) -> None:
        await self._first_list()
        log.info("initial Node listing complete: %d peer Node(s) known", len(self.registry))
        next_resync = time.monotonic() + self.resync_interval
        kernel_every = min(
            self.kernel_resync_interval or self.resync_interval, self.resync_interval
        )
        next_kernel = time.monotonic() + kernel_every
        backoff = 0.5
        try:
            while True:
                due = min(next_resync, next_kernel)  # inf while a resync reads
                timeout = None if due == float("inf") else max(0.0, due - time.monotonic())
                # asyncio.timeout, not wait_for: no extra task for Kopf to wait on at exit.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wakeup.wait()
                now = time.monotonic()
                if self._reading is None and now >= next_kernel:
                    # A resync reads the kernel and recomputes everything in a task of its
                    # own: the changes that arrive meanwhile are applied as they come.
                    relist = now >= next_resync
                    self._reading = asyncio.create_task(self._read(relist=relist))
                    self._reading.add_done_callback(lambda _: self._wakeup.set())
                    next_kernel = float("inf")
                    if relist:
                        next_resync = float("inf")
                    continue
                finish = self._reading is not None and self._reading.done()
                if self._wakeup.is_set() and (delay := self.debouncer.delay()):
                    await self.pause(delay)  # gather the burst
                self._wakeup.clear()
                self.debouncer.taken()
                try:
                    if finish:
                        await self._finish_resync()
                    else:
                        # Only what changed is computed and diffed (against what was
                        # applied); a resync recomputes everything against the kernel.
                        await self.reconcile_once(full=False)
                except WgKubeError as exc:
                    self.stats.failures += 1
                    self._healthy = False
                    log.error("reconcile failed: %s; retrying in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    self.wake()
                    continue
                finally:
                    if finish:
                        # Timed from its end, failed or not: a failure is retried by
                        # the change path's backoff, which reads the kernel itself.
                        next_kernel = time.monotonic() + kernel_every
                        if next_resync == float("inf"):
                            next_resync = time.monotonic() + self.resync_interval
                backoff = 0.5
        finally:
            if self._reading is not None:
                self._reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, WgKubeError):
                    await self._reading

    async def _read(self, *, relist: bool) -> tuple[HubDesired, ResyncRead]:
        """A resync's slow half: relist (when due), recompute the whole desired state (in
        a thread) and read and diff the kernel. Nothing is applied here: the loop applies
        it (`_finish_resync`) together with what changed meanwhile."""
        if relist:
            try:
                await self.relist()
            except WgKubeError as exc:
                log.warning("resync: cannot list Nodes (%s); keeping the current peers", exc)
        await self._guard()
        # From here on the loop records what it takes and applies, for _finish_resync.
        self._batches = []
        journal = self.reconciler.start_journal()
        records = self.registry.records()
        guarded, hubs = self.guarded, self.hubs
        fresh = await asyncio.to_thread(self._fresh, records, guarded, hubs)
        read = await self.reconciler.read_for_resync(fresh.state(), journal)
        return fresh, read

    def _fresh(
        self, records: list[PeerRecord], guarded: Guard, hubs: tuple[HubRecord, ...]
    ) -> HubDesired:
        state = HubDesired(
            self.device, persistent_keepalive=self.persistent_keepalive, peer_cidrs=self.peer_cidrs
        )
        state.reset(records, protected=guarded[0], learned_endpoints=guarded[1], hubs=hubs)
        return state

    async def _finish_resync(self) -> None:
        task, self._reading = self._reading, None
        batches, self._batches = self._batches, None
        assert task is not None
        # What the kernel refused is tried once more: the cause may have gone.
        self.reconciler.retry_refused()
        try:
            fresh, read = task.result()
        except WgKubeError as exc:
            log.warning("resync: cannot read the kernel (%s); reading it in the loop", exc)
            await self.reconcile_once(full=True)
            return
        if batches is None or fresh.hubs != self.hubs:
            await self.reconcile_once(full=True)  # recomputed in full meanwhile
            return
        await self.reconcile_once(full=True, resync=(fresh, read, batches))

    async def _first_list(self) -> None:
        """Nothing is reconciled before one complete list of Nodes: until then the kernel
        keeps every peer it has, whatever the watch has or has not delivered yet."""
        backoff = 0.5
        while self.first_list is None:
            try:
                await self.relist()
                break
            except WgKubeError as exc:
                log.warning("cannot list Nodes yet (%s); the kernel stays as it is", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        if self.first_list is not None:
            await self.first_list()
        await self._guard()
        self.listed.set()
        self.wake()

    async def _guard(self) -> None:
        if self.guard is None:
            return
        try:
            self.guarded = await self.guard()
        except WgKubeError as exc:
            log.warning("cannot read the addresses to protect (%s); keeping the last set", exc)

    async def reconcile_once(
        self,
        *,
        full: bool = True,
        resync: tuple[HubDesired, ResyncRead, list[Changes]] | None = None,
    ) -> None:
        """One reconcile. `full`: desired state recomputed from every Node and diffed
        against the kernel as read; else only the Nodes changed since the last one, diffed
        against what was applied (the first reconcile is always full). `resync`: a full
        one whose recomputation and kernel read were made earlier (`_read`)."""
        started = time.monotonic()
        state = self._desired
        changed = None
        read = None
        if resync is not None:
            state, read, batches = resync
            changed = set()
            for batch in [*batches, self.registry.take_changes()]:
                changed |= state.update(batch)
            self._desired = state
        elif full or state is None or state.hubs != self.hubs:
            self._batches = None  # a resync in flight recomputed from an older start
            state = self._desired = HubDesired(
                self.device,
                persistent_keepalive=self.persistent_keepalive,
                peer_cidrs=self.peer_cidrs,
            )
            self.registry.take_changes()
            state.reset(
                self.registry.records(),
                protected=self.guarded[0],
                learned_endpoints=self.guarded[1],
                hubs=self.hubs,
            )
        else:
            batch = self.registry.take_changes()
            if self._batches is not None:
                self._batches.append(batch)
            changed = state.update(batch)
        desired = state.state()
        rejections = state.rejections()
        rejections += [
            Rejection(e.ref.name, INVALID, e.error or "") for e in self.registry.invalid()
        ]
        try:
            if self.relay is not None and not self.relay.alone():
                if read is not None:
                    # Routes move between devices outside the reconciler: with relays a
                    # resync is a full diff in the loop, and the read is dropped.
                    if self.reconciler.journal is read.journal:
                        self.reconciler.journal = None
                    full = True
                ops = await self.relay.reconcile(desired, None if full else changed)
            elif read is None:
                ops = await self.reconciler.reconcile(desired, None if full else changed)
            else:
                finished = await self.reconciler.finish_resync(desired, read, changed or ())
                if finished is None:
                    # The read is unusable (something failed meanwhile): read it again.
                    ops = await self.reconciler.reconcile(desired)
                else:
                    ops = finished
        finally:
            # Also after a failed reconcile: the peers it refused before failing are known.
            rejections += self._refused()
            await self._report(rejections)
        self._healthy = True
        self.stats.reconciles += 1
        self.stats.operations += len(ops)
        self.stats.last_success = time.time()
        self.stats.last_duration = time.monotonic() - started
        self.stats.peers = len(desired.peers or {}) - len(self.reconciler.refused)
        self.stats.rejected = len(rejections)
        self.stats.rejected_by_reason = dict(Counter(r.reason for r in rejections))
        self.stats.rejected_nodes = sorted(r.node for r in rejections)
        if ops or self.stats.reconciles == 1:
            log.info(
                "reconciled: %d peer(s), %d rejected, %d change(s) in %.3fs",
                self.stats.peers,
                len(rejections),
                len(ops),
                self.stats.last_duration,
            )

    def _refused(self) -> list[Rejection]:
        """The peers whose data the kernel refused, as rejections of their Nodes."""
        if not self.reconciler.refused:
            return []
        # Oldest last: of two Nodes with one key, the older holds the peer (seniority).
        records = sorted(self.registry.records(), key=seniority, reverse=True)
        nodes = {r.public_key: r.node for r in records}
        return [
            Rejection(nodes[key], refusal.reason, refusal.message)
            for key, refusal in self.reconciler.refused.items()
            if key in nodes
        ]

    async def _report(self, rejections: list[Rejection]) -> None:
        current = {r.node: r for r in rejections}
        for node, rejection in sorted(current.items()):
            if self._reported.get(node) == rejection:
                continue
            log.warning("peer %s skipped (%s): %s", node, rejection.reason, rejection.message)
            try:
                await self.report(rejection)
            except WgKubeError as exc:
                log.warning("cannot post the Event for node %s: %s", node, exc)
                continue
            self._reported[node] = rejection
        for node in set(self._reported) - set(current):
            log.info("peer %s is no longer rejected", node)
            del self._reported[node]

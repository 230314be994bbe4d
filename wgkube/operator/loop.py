"""The hub's single reconcile loop: woken by events, debounced, plus a periodic resync."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wgkube.desired.hub import hub_state, seniority
from wgkube.desired.model import INVALID, DeviceSpec, Rejection
from wgkube.desired.protected import Protected
from wgkube.domain.annotations import HubRecord
from wgkube.domain.errors import WgKubeError
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint, IPNetwork
from wgkube.operator.registry import PeerRegistry
from wgkube.reconcile import Reconciler

log = logging.getLogger("wgkube.hub")

Reporter = Callable[[Rejection], Awaitable[None]]
Relister = Callable[[], Awaitable[None]]
Guard = tuple[tuple[Protected, ...], dict[PublicKey, Endpoint]]
"""What no allowed-ips may cover, and the endpoints WireGuard has learned."""
Guarder = Callable[[], Awaitable[Guard]]


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
    debounce: float = 0.2
    resync_interval: float = 60.0
    persistent_keepalive: int = 0
    guard: Guarder | None = None
    """Reads the protected set; called before the first reconcile and at every resync."""
    peer_cidrs: tuple[IPNetwork, ...] | None = None
    hubs: tuple[HubRecord, ...] = ()
    """The announced hubs (set by the Hub from the announcement): peers on their addresses."""
    guarded: Guard = field(default_factory=lambda: ((), {}))
    listed: asyncio.Event = field(default_factory=asyncio.Event)
    stats: LoopStats = field(default_factory=LoopStats)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _reported: dict[str, Rejection] = field(default_factory=dict)
    _healthy: bool = False

    def wake(self) -> None:
        self._wakeup.set()

    @property
    def ready(self) -> bool:
        return self.listed.is_set() and self._healthy

    async def run(self) -> None:
        await self._first_list()
        log.info("initial Node listing complete: %d peer Node(s) known", len(self.registry))
        next_resync = time.monotonic() + self.resync_interval
        backoff = 0.5
        while True:
            timeout = max(0.0, next_resync - time.monotonic())
            # asyncio.timeout, not wait_for: no extra task for Kopf to wait on at exit.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            resync = time.monotonic() >= next_resync
            if self._wakeup.is_set() and self.debounce:
                await asyncio.sleep(self.debounce)  # gather the burst
            self._wakeup.clear()
            if resync:
                try:
                    await self.relist()
                except WgKubeError as exc:
                    log.warning("resync: cannot list Nodes (%s); keeping the current peers", exc)
                # What the kernel refused is tried once more: the cause may have gone.
                self.reconciler.retry_refused()
                await self._guard()
            try:
                await self.reconcile_once()
            except WgKubeError as exc:
                self.stats.failures += 1
                self._healthy = False
                log.error("reconcile failed: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self.wake()
                continue
            backoff = 0.5
            if resync:
                next_resync = time.monotonic() + self.resync_interval

    async def _first_list(self) -> None:
        """Nothing is reconciled before one complete list of Nodes: until then the kernel
        keeps every peer it has, whatever the watch has or has not delivered yet."""
        backoff = 0.5
        while True:
            try:
                await self.relist()
                break
            except WgKubeError as exc:
                log.warning("cannot list Nodes yet (%s); the kernel stays as it is", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
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

    async def reconcile_once(self) -> None:
        started = time.monotonic()
        desired, rejections = hub_state(
            self.device,
            self.registry.records(),
            persistent_keepalive=self.persistent_keepalive,
            protected=self.guarded[0],
            learned_endpoints=self.guarded[1],
            peer_cidrs=self.peer_cidrs,
            hubs=self.hubs,
        )
        rejections += [
            Rejection(e.ref.name, INVALID, e.error or "") for e in self.registry.invalid()
        ]
        try:
            ops = await self.reconciler.reconcile(desired)
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

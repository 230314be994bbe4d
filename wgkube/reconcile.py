"""One reconcile step: read the kernel, diff, log the diff, apply; nothing when it is empty.

Failure isolation lives here, where operations are known with the peers they belong to.
When the kernel (or wireguard-go) refuses an operation for what it carries
(OperationRejected), the remaining work is split into one unit per peer (its upsert and
its routes) and bisected: every unit the kernel takes is applied in the same reconcile,
and the peer of a unit it refuses is quarantined — left out (or, with `keep_refused`,
kept as the kernel had it) until its desired data changes. A device-level failure (any
other KernelError: the interface vanished, permission denied) is still raised; the next
reconcile diffs against the kernel and finishes what was left half-applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wgkube.desired.model import CONFLICT, DesiredState, PeerSpec
from wgkube.diff.cache import ObservedCache
from wgkube.diff.model import (
    AddRoute,
    ObservedState,
    Operation,
    RemovePeer,
    RemoveRoute,
    UpsertPeer,
)
from wgkube.diff.plan import describe, plan
from wgkube.domain.errors import KernelError, OperationRejected, RouteConflict, WgKubeError
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint, IPNetwork
from wgkube.kernel.port import Kernel

log = logging.getLogger("wgkube.reconcile")

LOGGED_CHANGES = 20
"""Changes listed one per line at INFO before a reconcile applies them."""

KERNEL_REJECTED = "KernelRejected"
"""Event reason: the kernel refused a peer's value that the codec let through."""

ISOLATION_ROUNDS = 3
"""Re-plans after a refusal: each one applies what is left without the peers just refused."""

MESSAGE_LIMIT = 900
"""Characters of a refusal's message (it goes into an Event, whose message is bounded)."""


@dataclass(frozen=True, slots=True)
class PeerRefusal:
    """A peer whose data the kernel refused; quarantined while its desired spec is `spec`."""

    public_key: PublicKey
    spec: PeerSpec
    reason: str
    """KERNEL_REJECTED, or PeerConflict when a route belongs to someone else."""
    message: str
    """Names the refused value and the kernel's answer."""


@dataclass(frozen=True, slots=True)
class _Unit:
    """Operations that stand or fall together: one peer's, or one that belongs to no peer."""

    ops: tuple[Operation, ...]
    peer: PublicKey | None


@dataclass
class Journal:
    """What the change path applied while a resync was reading the kernel: replayed onto
    what the read returned, it gives the kernel as it is when the resync applies."""

    ops: list[Operation] = field(default_factory=list)
    keys: set[PublicKey] = field(default_factory=set)
    """The peers those changes were about."""
    broken: bool = False
    """A reconcile failed or was not clean meanwhile: what landed is not known."""


@dataclass(frozen=True, slots=True)
class ResyncRead:
    """A resync's kernel read and its full diff, made off the change path."""

    desired: DesiredState
    """The desired state the diff was made for (a snapshot: it may be behind by now)."""
    observed: ObservedState
    ops: tuple[Operation, ...]
    journal: Journal


@dataclass(frozen=True, slots=True)
class _Prepared:
    cache: ObservedCache
    """The kernel as read, plus what was applied since."""
    kept: tuple[Operation, ...]
    """The resync's operations that no change made meanwhile touched."""
    keys: frozenset[PublicKey]
    """The peers to diff again, now, against `cache`."""


class ReconcileObserver(Protocol):
    """Told about every reconcile (metrics): its duration and the operations applied,
    or None when it failed."""

    def reconciled(self, seconds: float, ops: Sequence[Operation] | None) -> None: ...


@dataclass
class Reconciler:
    """Keeps only what the kernel cannot tell: which published endpoints were applied,
    and which peers' data the kernel refused."""

    kernel: Kernel
    keep_refused: bool = False
    """True on a spoke: a refused peer keeps what the kernel had (its last good state).
    False on the hub: a refused peer is removed, like one whose annotations are invalid."""
    applied_endpoints: dict[PublicKey, Endpoint | None] = field(default_factory=dict)
    refused: dict[PublicKey, PeerRefusal] = field(default_factory=dict)
    """The quarantine: read by the caller to report each refusal (an Event, a log line)."""
    skipped_routes: dict[IPNetwork, str] = field(default_factory=dict)
    """With keep_refused (a spoke): routes another owner holds, each with why. Only that
    route is left out; the hub's peer and its other routes stay (the tunnel stays up)."""
    _retrying: set[PublicKey] = field(default_factory=set)

    def retry_refused(self) -> None:
        """Try every quarantined peer once more in the next reconcile (the hub's resync).

        A refusal caused by the host rather than the value (a foreign route since
        removed, a transient kernel condition) would otherwise last until the Node
        happens to change. One found again is logged quietly and stays the same
        PeerRefusal, so the caller reports nothing new; one that fails to be retried
        (the reconcile failed first) stays quarantined.
        """
        self._retrying = set(self.refused)

    observer: ReconcileObserver | None = None
    cache: ObservedCache | None = None
    """The kernel as of the last clean apply (None: read it). Dropped by any failure."""
    reads: int = 0
    """Kernel reads (observe) made, for the scale tests and the bench."""
    journal: Journal | None = None
    """Set while a resync reads the kernel (start_journal): every reconcile adds to it."""

    def start_journal(self) -> Journal:
        """From now on, what is applied is recorded for the resync about to read."""
        self.journal = Journal()
        return self.journal

    async def read_for_resync(self, desired: DesiredState, journal: Journal) -> ResyncRead:
        """Read the kernel and diff everything against `desired`, without holding up the
        change path: the read awaits the kernel, the diff of N peers runs in a thread.
        `journal` must have been started before `desired` was taken and the read began.
        """
        applied = dict(self.applied_endpoints)
        observed = await self.kernel.observe(desired.device.name)
        self.reads += 1
        ops = await asyncio.to_thread(plan, desired, observed, applied_endpoints=applied)
        return ResyncRead(desired, observed, ops, journal)

    async def finish_resync(
        self, desired: DesiredState, read: ResyncRead, changed: Collection[PublicKey]
    ) -> tuple[Operation, ...] | None:
        """Apply a resync read earlier: its diff, minus whatever a change since made stale.

        The read is brought up to date by replaying what the change path applied since it
        began (`read.journal`); the resync's operations on the peers changed since
        (`changed`: their desired spec moved on; the journal's: their kernel state did)
        and on those peers' prefixes are dropped, and those peers are diffed again now,
        against current desired state and the replayed read. So a change applied during
        the read is never "repaired" back, and drift elsewhere is repaired as read.
        None: the read cannot be used (something failed meanwhile, the device went, an
        operation the cache does not model landed); the caller reconciles in full.
        """
        journal = read.journal
        if self.journal is journal:
            self.journal = None
        if journal.broken or not read.observed.exists or desired.peers is None:
            return None
        cache = ObservedCache(read.observed)
        if not cache.replay(journal.ops):
            return None
        keys = set(changed) | journal.keys | set(self.refused) | self._retrying
        nets: set[IPNetwork] = set(self.skipped_routes)
        for op in journal.ops:
            if isinstance(op, UpsertPeer):
                nets.update(op.allowed_ips or ())
            elif isinstance(op, AddRoute | RemoveRoute):
                nets.add(op.destination)
        sources = (read.desired.peers or {}, desired.peers, read.observed.peers, cache.peers)
        for key in keys:
            for source in sources:
                peer = source.get(key)
                if peer is not None:
                    nets.update(peer.allowed_ips)
        kept = tuple(op for op in read.ops if not _concerns(op, keys, nets))
        return await self.reconcile(desired, prepared=_Prepared(cache, kept, frozenset(keys)))

    async def reconcile(
        self,
        desired: DesiredState,
        changed: Collection[PublicKey] | None = None,
        *,
        prepared: _Prepared | None = None,
    ) -> tuple[Operation, ...]:
        """Make the kernel match `desired`.

        With `changed` (the peers whose desired spec changed since the last reconcile)
        and a cache from a clean last apply, only those peers and their routes are
        diffed, against the cache: no kernel read, work in proportion to the change.
        Without either, the kernel is read and everything diffed (start-up, resync,
        after a failure): drift made by hand is repaired there.
        """
        started = time.monotonic()
        try:
            ops = await self._reconcile(desired, changed, prepared)
            for key in self._retrying:  # taken by the kernel this time
                self.refused.pop(key, None)
            # Read after the apply: one begun before a resync started its journal may
            # have landed after its read began.
            journal = self.journal
            if journal is not None:
                if self.cache is None:  # refused in part: what landed is not replayable
                    journal.broken = True
                journal.ops.extend(ops)
                journal.keys.update(changed or ())
                journal.keys.update(
                    op.public_key for op in ops if isinstance(op, UpsertPeer | RemovePeer)
                )
        except WgKubeError:
            if self.journal is not None:
                self.journal.broken = True
            if self.observer is not None:
                self.observer.reconciled(time.monotonic() - started, None)
            raise
        finally:
            self._retrying = set()
        if self.observer is not None:
            self.observer.reconciled(time.monotonic() - started, ops)
        return ops

    async def _reconcile(
        self,
        desired: DesiredState,
        changed: Collection[PublicKey] | None,
        prepared: _Prepared | None = None,
    ) -> tuple[Operation, ...]:
        ifname = desired.device.name
        self._forget_changed(desired)
        cache, self.cache = self.cache, None  # back only after a clean apply
        if prepared is not None:
            # A resync read earlier: its kept operations, and the peers changed since
            # diffed now against the read brought up to date.
            cache = prepared.cache
            observed = cache.state()
            effective = self._without_refused(desired, observed)
            again = plan(
                *cache.narrowed(effective, prepared.keys),
                applied_endpoints=self.applied_endpoints,
            )
            kept = set(prepared.kept)  # the device's own operations come in both
            ops = prepared.kept + tuple(op for op in again if op not in kept)
            narrow = False
        elif changed is None or cache is None or desired.peers is None:
            # Peers left untouched (None): the device alone is read, not its peers
            # and routes (a hub's start-up, before it knows any Node).
            observed = await self.kernel.observe(ifname, device_only=desired.peers is None)
            self.reads += 1
            cache = ObservedCache(observed) if observed.exists else None
            effective = self._without_refused(desired, observed)
            ops = plan(effective, observed, applied_endpoints=self.applied_endpoints)
            narrow = False
        else:
            observed = cache.state() if self.keep_refused else cache.device
            effective = self._without_refused(desired, observed)
            ops = plan(
                *cache.narrowed(effective, changed), applied_endpoints=self.applied_endpoints
            )
            narrow = True
        if ops:
            _log_changes(ifname, ops)
            writes = self.kernel.writes
            try:
                try:
                    await self.kernel.apply(ifname, ops)
                except OperationRejected as exc:
                    log.log(
                        logging.INFO if self._retrying else logging.WARNING,
                        "%s: the kernel refused part of the batch (%s); finding the "
                        "operations at fault and applying the rest",
                        ifname,
                        exc,
                    )
                    effective = await self._isolate(desired, observed)
                    cache = None  # some of it was refused: read the kernel next time
            except KernelError as exc:
                done = self.kernel.writes - writes
                if done and not isinstance(exc, OperationRejected):
                    log.warning(
                        "%s: left half-applied by %s (%d write(s) landed before it); the "
                        "next reconcile diffs against the kernel and finishes the job",
                        ifname,
                        type(exc).__name__,
                        done,
                    )
                raise
        if effective.peers is not None:
            if narrow and changed is not None:
                for key in changed:
                    spec = effective.peers.get(key)
                    if spec is None:
                        self.applied_endpoints.pop(key, None)
                    else:
                        self.applied_endpoints[key] = spec.endpoint
            else:
                self.applied_endpoints = {k: p.endpoint for k, p in effective.peers.items()}
        if cache is not None and desired.peers is not None and cache.replay(ops):
            self.cache = cache
        return ops

    def _forget_changed(self, desired: DesiredState) -> None:
        """A quarantine ends when the peer's desired data changes or the peer goes."""
        if desired.peers is None:
            return
        for net in list(self.skipped_routes):
            if net not in desired.routes:
                del self.skipped_routes[net]
        for key, refusal in list(self.refused.items()):
            if desired.peers.get(key) != refusal.spec:
                log.info("peer %s: its data changed; the kernel's refusal is lifted", key.short())
                del self.refused[key]

    def _without_refused(self, desired: DesiredState, before: ObservedState) -> DesiredState:
        """`desired` minus quarantined peers and their routes (or, with keep_refused, with
        them as `before` had them)."""
        if desired.peers is None or not (self.refused or self.skipped_routes):
            return desired
        peers = dict(desired.peers)
        routes = set(desired.routes) - set(self.skipped_routes)
        for key, refusal in self.refused.items():
            if key in self._retrying or peers.get(key) != refusal.spec:
                continue
            del peers[key]
            routes -= set(refusal.spec.allowed_ips)
            have = before.peers.get(key)
            if self.keep_refused and have is not None:
                # endpoint None: keep whatever the kernel holds (published or learned).
                peers[key] = PeerSpec(
                    public_key=key,
                    endpoint=None,
                    allowed_ips=tuple(have.allowed_ips),
                    persistent_keepalive=have.persistent_keepalive,
                    preshared_key=have.preshared_key,
                )
                routes |= {net for net in before.routes if net in have.allowed_ips}
        return DesiredState(device=desired.device, peers=peers, routes=frozenset(routes))

    async def _isolate(self, desired: DesiredState, before: ObservedState) -> DesiredState:
        """Apply everything the kernel takes; quarantine the peers of what it refuses.

        `before` is the kernel as it was before this reconcile wrote anything: with
        keep_refused, a refused peer is put back the way it was there.
        """
        ifname = desired.device.name
        effective = desired
        unattributed: list[OperationRejected] = []
        for _ in range(ISOLATION_ROUNDS):
            observed = await self.kernel.observe(ifname)
            effective = self._without_refused(desired, before)
            ops = plan(effective, observed, applied_endpoints=self.applied_endpoints)
            if not ops:
                break
            refused = await self._bisect(ifname, _units(ops, effective))
            if not refused:
                break
            unattributed = []
            for unit, op, exc in refused:
                if unit.peer is None or desired.peers is None or unit.peer not in desired.peers:
                    log.error("%s: the kernel refused %s: %s", ifname, _line(op), _answer(exc))
                    unattributed.append(exc)
                    continue
                if (
                    self.keep_refused
                    and isinstance(exc, RouteConflict)
                    and isinstance(op, AddRoute)
                ):
                    # Someone else's route to that prefix (a connected subnet): it
                    # stays theirs; the tunnel and the other routes stay ours.
                    log.warning("%s: route %s left to its owner: %s", ifname, op.destination, exc)
                    self.skipped_routes[op.destination] = str(exc)
                    continue
                self._quarantine(ifname, desired.peers[unit.peer], op, exc)
            if unattributed:
                break
        if unattributed:
            # Not a peer's data (the device's own address, port or MTU): a reconcile
            # failure, retried with backoff; every peer the kernel took is in place.
            raise unattributed[0]
        return self._without_refused(desired, before)

    def _quarantine(
        self, ifname: str, spec: PeerSpec, op: Operation, exc: OperationRejected
    ) -> None:
        if isinstance(exc, RouteConflict):
            # Its words say whose the route is; the answer alone would not.
            reason, message = CONFLICT, f"cannot {_line(op)}: {exc}"
        else:
            reason, message = KERNEL_REJECTED, f"the kernel refused {_line(op)}: {_answer(exc)}"
        if len(message) > MESSAGE_LIMIT:
            message = message[: MESSAGE_LIMIT - 1] + "…"
        refusal = PeerRefusal(spec.public_key, spec, reason, message)
        again = spec.public_key in self._retrying and self.refused.get(spec.public_key) == refusal
        self._retrying.discard(spec.public_key)
        log.log(
            logging.DEBUG if again else logging.WARNING,
            "%s: peer %s quarantined until its data changes (%s): %s",
            ifname,
            spec.public_key.short(),
            reason,
            message,
        )
        self.refused[spec.public_key] = refusal

    async def _bisect(
        self, ifname: str, units: Sequence[_Unit]
    ) -> list[tuple[_Unit, Operation, OperationRejected]]:
        """The units the kernel refuses, each with its first refused operation.

        Halves that the kernel takes are applied as they are tried; an operation applied
        twice is harmless (every operation is idempotent), so no undo is needed.
        """
        if not units:
            return []
        try:
            await self.kernel.apply(ifname, [op for unit in units for op in unit.ops])
            return []
        except OperationRejected as exc:
            if len(units) == 1 and len(units[0].ops) == 1:
                return [(units[0], units[0].ops[0], exc)]
        if len(units) == 1:
            # Which of its operations: applied one by one up to the first refused.
            for op in units[0].ops:
                try:
                    await self.kernel.apply(ifname, [op])
                except OperationRejected as exc:
                    return [(units[0], op, exc)]
            return []  # refused as a whole, taken piece by piece: nothing at fault now
        mid = len(units) // 2
        left = await self._bisect(ifname, units[:mid])
        right = await self._bisect(ifname, units[mid:])
        return left + right


def _concerns(op: Operation, keys: Collection[PublicKey], nets: Collection[IPNetwork]) -> bool:
    """Whether `op` is about one of the peers `keys` or a route to one of `nets`."""
    if isinstance(op, UpsertPeer | RemovePeer):
        return op.public_key in keys
    if isinstance(op, AddRoute | RemoveRoute):
        return op.destination in nets
    return False


def _units(ops: Sequence[Operation], desired: DesiredState) -> list[_Unit]:
    """One unit per peer (its upsert and the routes to its allowed IPs), placed where the
    peer's first operation was; every other operation is a unit of its own, in order."""
    owner: dict[IPNetwork, PublicKey] = {}
    for peer, spec in (desired.peers or {}).items():
        for net in spec.allowed_ips:
            owner[net] = peer
    grouped: dict[PublicKey, list[Operation]] = {}
    order: list[PublicKey | Operation] = []
    for op in ops:
        key: PublicKey | None = None
        if isinstance(op, UpsertPeer):
            key = op.public_key
        elif isinstance(op, AddRoute):
            key = owner.get(op.destination)
        if key is None:
            order.append(op)
            continue
        if key not in grouped:
            grouped[key] = []
            order.append(key)
        grouped[key].append(op)
    return [
        _Unit(tuple(grouped[item]), item) if isinstance(item, PublicKey) else _Unit((item,), None)
        for item in order
    ]


def _line(op: Operation) -> str:
    return describe([op])[0]


def _answer(exc: OperationRejected) -> str:
    return exc.answer or str(exc)


def _log_changes(ifname: str, ops: Sequence[Operation]) -> None:
    log.info("%s: applying %d change(s)", ifname, len(ops))
    lines = describe(ops)
    for i, line in enumerate(lines):
        # The first few at INFO; all of a 5000-peer start-up only at DEBUG.
        log.log(logging.INFO if i < LOGGED_CHANGES else logging.DEBUG, "%s:   %s", ifname, line)
    if len(lines) > LOGGED_CHANGES:
        log.info(
            "%s:   … and %d more (log level debug shows them)", ifname, len(lines) - LOGGED_CHANGES
        )

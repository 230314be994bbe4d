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

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wgkube.desired.model import CONFLICT, DesiredState, PeerSpec
from wgkube.diff.model import AddRoute, ObservedState, Operation, UpsertPeer
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

    async def reconcile(self, desired: DesiredState) -> tuple[Operation, ...]:
        started = time.monotonic()
        try:
            ops = await self._reconcile(desired)
            for key in self._retrying:  # taken by the kernel this time
                self.refused.pop(key, None)
        except WgKubeError:
            if self.observer is not None:
                self.observer.reconciled(time.monotonic() - started, None)
            raise
        finally:
            self._retrying = set()
        if self.observer is not None:
            self.observer.reconciled(time.monotonic() - started, ops)
        return ops

    async def _reconcile(self, desired: DesiredState) -> tuple[Operation, ...]:
        ifname = desired.device.name
        self._forget_changed(desired)
        observed = await self.kernel.observe(ifname)
        effective = self._without_refused(desired, observed)
        ops = plan(effective, observed, applied_endpoints=self.applied_endpoints)
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
            self.applied_endpoints = {k: p.endpoint for k, p in effective.peers.items()}
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

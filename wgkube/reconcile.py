"""One reconcile step: read the kernel, diff, log the diff, apply; nothing when it is empty."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wgkube.desired.model import DesiredState
from wgkube.diff.model import Operation
from wgkube.diff.plan import describe, plan
from wgkube.domain.errors import WgKubeError
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint
from wgkube.kernel.port import Kernel

log = logging.getLogger("wgkube.reconcile")

LOGGED_CHANGES = 20
"""Changes listed one per line at INFO before a reconcile applies them."""


class ReconcileObserver(Protocol):
    """Told about every reconcile (metrics): its duration and the operations applied,
    or None when it failed."""

    def reconciled(self, seconds: float, ops: Sequence[Operation] | None) -> None: ...


@dataclass
class Reconciler:
    """Keeps only what the kernel cannot tell: which published endpoints were applied."""

    kernel: Kernel
    applied_endpoints: dict[PublicKey, Endpoint | None] = field(default_factory=dict)
    observer: ReconcileObserver | None = None

    async def reconcile(self, desired: DesiredState) -> tuple[Operation, ...]:
        started = time.monotonic()
        try:
            ops = await self._reconcile(desired)
        except WgKubeError:
            if self.observer is not None:
                self.observer.reconciled(time.monotonic() - started, None)
            raise
        if self.observer is not None:
            self.observer.reconciled(time.monotonic() - started, ops)
        return ops

    async def _reconcile(self, desired: DesiredState) -> tuple[Operation, ...]:
        ifname = desired.device.name
        observed = await self.kernel.observe(ifname)
        ops = plan(desired, observed, applied_endpoints=self.applied_endpoints)
        if ops:
            log.info("%s: applying %d change(s)", ifname, len(ops))
            lines = describe(ops)
            for i, line in enumerate(lines):
                # The first few at INFO; all of a 5000-peer start-up only at DEBUG.
                log.log(
                    logging.INFO if i < LOGGED_CHANGES else logging.DEBUG, "%s:   %s", ifname, line
                )
            if len(lines) > LOGGED_CHANGES:
                log.info(
                    "%s:   … and %d more (log level debug shows them)",
                    ifname,
                    len(lines) - LOGGED_CHANGES,
                )
            await self.kernel.apply(ifname, ops)
        if desired.peers is not None:
            self.applied_endpoints = {k: p.endpoint for k, p in desired.peers.items()}
        return ops

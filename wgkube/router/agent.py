"""The router's steady state: follow the hub announcement, keep this node's overlay routes
via the hub's InternalIP, and say plainly when it cannot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wgkube.desired.router import RouterDesired, router_routes
from wgkube.diff.gateway import GatewayOperation, plan_gateway_routes
from wgkube.domain import announcement
from wgkube.domain.annotations import HubRecord
from wgkube.domain.errors import AnnouncementError, OperationRejected, WgKubeError
from wgkube.kernel.gateway import GatewayTable
from wgkube.kube.client import Api, Forbidden, KubeApiError
from wgkube.kube.watch import follow_config_map
from wgkube.observe import probes
from wgkube.router.settings import RouterSettings

log = logging.getLogger("wgkube.router")

ANNOUNCEMENT = f"ConfigMap {announcement.NAMESPACE}/{announcement.NAME}"
GRANT = (
    "the router's ServiceAccount wg-kube/wg-kube-router may read it through the Role "
    "wg-kube-router in manifests/40-router.yaml: apply the manifests"
)


@dataclass
class Router:
    settings: RouterSettings
    api: Api
    table: GatewayTable
    hub: HubRecord | None = None
    """The last good hub; kept when the announcement goes bad or away."""
    last: RouterDesired | None = None
    """What the last reconcile decided (None: none succeeded yet)."""
    refused: str | None = None
    """A permission problem in force (a 403 reading the announcement)."""
    failure: str | None = None
    """The last reconcile's error, until one succeeds."""
    reconciles: int = 0
    status: Callable[[str], None] = lambda _: None
    """Told a one-line state whenever it changes."""
    _status: str = ""
    _said: set[str] = field(default_factory=set)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    # -- state --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return (
            self.last is not None
            and self.last.ready
            and self.refused is None
            and self.failure is None
        )

    def problems(self) -> list[str]:
        found = [p for p in (self.refused, self.failure) if p]
        if self.last is None:
            found.append("no reconcile has completed yet")
        elif self.last.problem:
            found.append(self.last.problem)
        return found

    def summary(self) -> dict[str, Any]:
        last = self.last
        return {
            "ready": self.ready,
            "hub": last.hub if last else None,
            "gateway": str(last.gateway) if last and last.gateway else None,
            "routes": sorted(str(r) for r in (last.routes or ())) if last else [],
            "skipped": [f"{net}: {why}" for net, why in last.skipped] if last else [],
            "problems": self.problems(),
            "reconciles": self.reconciles,
            "writes": self.table.writes,
        }

    def _state(self) -> None:
        problems = self.problems()
        if problems:
            text = "not ready: " + "; ".join(problems)
        elif self.last is not None and self.last.routes is not None:
            routes = ", ".join(sorted(str(r.network) for r in self.last.routes)) or "none"
            text = f"routing {routes} via hub {self.last.hub} ({self.last.gateway})"
        else:
            text = "starting"
        if text != self._status:
            self._status = text
            self.status(text)

    def _once(self, message: str, *args: object, level: int = logging.WARNING) -> None:
        text = message % args
        if text not in self._said:
            self._said.add(text)
            log.log(level, "%s", text)

    # -- the announcement ---------------------------------------------------------------
    async def _listed(self, items: list[dict[str, Any]]) -> None:
        if self.refused is not None:
            log.info("permission to read %s granted again", ANNOUNCEMENT)
            self.refused = None
        self._announced(items[0] if items else None)

    async def _event(self, kind: str, obj: dict[str, Any]) -> None:
        self._announced(None if kind == "DELETED" else obj)

    def _announced(self, config_map: dict[str, Any] | None) -> None:
        """Only the hub's ServiceAccount may write the announcement: what it says is
        trusted (and with a pinned key, only the hub holding that key)."""
        if config_map is None:
            what = f"keeping routes via {self.hub.node}" if self.hub else "waiting"
            self._once("%s is absent; %s", ANNOUNCEMENT, what, level=logging.INFO)
        else:
            try:
                hubs = announcement.decode(config_map.get("data"))
                hub = announcement.trusted_hub(hubs, self.settings.pinned_hub_key)
            except AnnouncementError as exc:
                what = "keeping the last good hub" if self.hub else "waiting for a valid one"
                self._once("hub announcement refused, %s: %s", what, exc, level=logging.ERROR)
            else:
                if hub != self.hub:
                    log.info(
                        "hub %s: InternalIP %s, router prefixes %s, allowed-ips %s",
                        hub.node,
                        hub.internal_ip or "(not announced)",
                        ",".join(map(str, hub.router_prefixes or ())) or "(not announced)",
                        ",".join(map(str, hub.allowed_ips)),
                    )
                    self.hub = hub
                    self._said.clear()
        self._state()
        self._wakeup.set()

    async def _api_error(self, exc: KubeApiError) -> None:
        if isinstance(exc, Forbidden):
            self.refused = f"permission denied to watch {ANNOUNCEMENT}"
            self._once(
                "permission denied to watch %s (%s): %s; routes stay as they are, retrying slowly",
                ANNOUNCEMENT,
                exc,
                GRANT,
                level=logging.ERROR,
            )
            self._state()
        else:
            self._once("API server unavailable (%s); routes stay as they are, retrying", exc)

    # -- reconcile ------------------------------------------------------------------------
    async def reconcile(self) -> tuple[GatewayOperation, ...]:
        """Read the host, decide, diff against our routes as the kernel has them, apply."""
        desired = router_routes(
            self.hub,
            node_name=self.settings.node_name,
            connected=await self.table.connected(),
            prefixes=self.settings.prefixes,
        )
        observed = await self.table.observe()
        ops = plan_gateway_routes(desired.routes, observed)
        rejected: list[str] = []
        if ops:
            log.info("applying %d route change(s)", len(ops))
            for op in ops:
                log.info("  %s", op)
            for op in ops:
                # One refused route (a conflict with someone else's) must not hold back
                # the others; it is retried on every resync.
                try:
                    await self.table.apply([op])
                except OperationRejected as exc:
                    rejected.append(f"{op}: {exc}")
        elif self.reconciles == 0 and observed:
            log.info("adopted %d route(s) as they are: %s", len(observed), _routes(observed))
        self.reconciles += 1
        self._report(desired, ops, complete=not rejected)
        if rejected:
            raise OperationRejected("refused: " + "; ".join(rejected))
        return ops

    def _report(
        self, desired: RouterDesired, ops: tuple[GatewayOperation, ...], *, complete: bool
    ) -> None:
        for net, why in desired.skipped:
            self._once("not routing %s via the hub: %s", net, why)
        if desired.problem:
            self._once("%s; routes stay as they are", desired.problem, level=logging.ERROR)
        for note in desired.notes:
            self._once("%s: no routes", note, level=logging.INFO)
        changed = self.last is None or self.last != desired
        self.last = desired
        if complete and desired.ready and (ops or changed) and desired.routes is not None:
            log.info(
                "routes in place via hub %s (%s): %s (%d change(s))",
                desired.hub,
                desired.gateway,
                _routes(desired.routes) or "none",
                len(ops),
            )
        self._state()

    async def run(self) -> None:
        self._state()
        follower = asyncio.create_task(
            follow_config_map(
                self.api,
                announcement.NAMESPACE,
                announcement.NAME,
                on_list=self._listed,
                on_event=self._event,
                on_error=self._api_error,
            ),
            name="announcement",
        )
        try:
            await self._loop()
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def _loop(self) -> None:
        backoff = 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval):
                    await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self.reconcile()
                if self.failure is not None:
                    log.info("reconcile succeeded again")
                    self._said.discard(f"{self.failure}; retrying")
                    self.failure = None
                    self._state()
                backoff = 1.0
            except WgKubeError as exc:
                self.failure = f"reconcile failed: {exc}"
                self._once("%s; retrying", self.failure, level=logging.ERROR)
                self._state()
                # A conflict lasts until someone removes the other route: ask slowly.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.poll_interval)
                self._wakeup.set()


def _routes(routes: frozenset[Any]) -> str:
    return ", ".join(sorted(map(str, routes)))


async def serve_probes(address: str, router: Router, stop: asyncio.Event) -> None:
    """/healthz: the process serves; /readyz: routes in place via an on-link hub."""
    await probes.serve_probes(address, lambda: (router.ready, router.summary()), stop)

"""The spoke agent's steady state: keep its Node registered and follow the hub (with
several hubs announced, all of them, through wgkube.spoke_agent.hubs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from wgkube.desired.failover import FailoverPolicy
from wgkube.desired.model import DesiredState, DeviceSpec
from wgkube.desired.spoke import spoke_state, unsafe_routes
from wgkube.domain import announcement
from wgkube.domain.annotations import (
    HubRecord,
    NodeBody,
    creation_time,
    decode_hub,
    is_hub,
    is_peer,
    node_annotations,
    node_name,
    registration_patch,
)
from wgkube.domain.errors import AnnotationError, AnnouncementError, WgKubeError
from wgkube.domain.keys import PrivateKey
from wgkube.domain.net import IPAddress
from wgkube.kube.address import api_server_addresses
from wgkube.kube.client import Api, Forbidden, KubeApiError
from wgkube.kube.watch import follow_config_map, follow_nodes
from wgkube.reconcile import Reconciler
from wgkube.spoke_agent.hubs import HubSet
from wgkube.spoke_agent.settings import SpokeSettings

log = logging.getLogger("wgkube.spoke")

ANNOUNCEMENT = f"ConfigMap {announcement.NAMESPACE}/{announcement.NAME}"
GRANTS = {
    "own": (
        "the Node authorizer lets a kubelet read and patch only its own Node: NODE_NAME "
        "must be the name the kubelet registers, and the kubeconfig the kubelet's"
    ),
    "configmap": (
        f"group system:nodes may read {ANNOUNCEMENT} through the Role wg-kube-hub-readers "
        "in manifests/10-rbac.yaml: apply the manifests"
    ),
    "node": (
        "--hub-discovery=node reads the hub's Node, which a kubelet's credentials may not: "
        "grant nodes get/list/watch on Nodes, or use the default --hub-discovery=configmap"
    ),
}
"""What the manifests grant, named when the API server refuses (a 403 is a missing
grant, not an outage)."""


def device_spec(settings: SpokeSettings, key: PrivateKey) -> DeviceSpec:
    return DeviceSpec(
        name=settings.interface,
        private_key=key,
        listen_port=settings.listen_port,
        addresses=settings.address,
        mtu=settings.mtu,
    )


def failover_policy(settings: SpokeSettings) -> FailoverPolicy:
    return FailoverPolicy(
        interval=settings.hub_probe_interval,
        misses=settings.hub_probe_misses,
        hold_down=settings.hub_hold_down,
        handshake_limit=settings.health_handshake_limit,
    )


HUB_FAILOVER = "HubFailover"
"""Event reason: this spoke's traffic moved to another hub because its hub went down."""
HUB_FAILBACK = "HubFailback"
"""Event reason: traffic moved back to the preferred hub after its hold-down."""


def choose_hub(nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Several hubs: the oldest Node wins, then the name; deterministic on every spoke."""
    if not nodes:
        return None

    def order(node: NodeBody) -> tuple[str, str]:
        created = creation_time(node)
        return (created.isoformat() if created else "", node_name(node))

    return sorted(nodes, key=order)[0]


@dataclass
class SpokeAgent:
    settings: SpokeSettings
    key: PrivateKey
    api: Api
    reconciler: Reconciler
    hub: HubRecord | None = None
    """The last good hub configuration; kept when the hub's annotations go bad."""
    api_server: tuple[IPAddress, ...] = ()
    """The API server's addresses: no route from the hub may carry them into the tunnel."""
    _synced: HubRecord | None = None
    _hubs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _said: set[str] = field(default_factory=set)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _register: asyncio.Event = field(default_factory=asyncio.Event)
    status: Callable[[str], None] = lambda _: None
    """Told a one-line state whenever it changes (systemd's STATUS=)."""
    _status: str = ""
    _refused: dict[str, str] = field(default_factory=dict)
    several: HubSet | None = None
    """The hubs when more than one is announced (made at the first such announcement)."""
    on_active_hub: Callable[[str, bool], None] = lambda hub, moved: None
    """Told the active hub whenever it is set, and whether traffic moved (metrics)."""
    _leave_several: bool = False
    _events: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def device(self) -> DeviceSpec:
        return device_spec(self.settings, self.key)

    @property
    def active_hub(self) -> HubRecord | None:
        """The hub this spoke's traffic goes through."""
        if self.several is not None and self.several.hubs:
            return self.several.record(self.several.active)
        return self.hub

    @property
    def active_interface(self) -> str:
        """The interface of the active hub's tunnel: what the spoke's metrics and its
        WireGuardTunnel condition describe (the configured one with a single hub)."""
        if self.several is not None and self.several.hubs and self.several.active:
            return self.several.ifname(self.several.active) or self.settings.interface
        return self.settings.interface

    def hub_set(self) -> HubSet:
        if self.several is None:
            self.several = HubSet(
                kernel=self.reconciler.kernel,
                reconciler=self.reconciler,
                device=self.device,
                policy=failover_policy(self.settings),
                hub_allowed_ips=self.settings.hub_allowed_ips,
                persistent_keepalive=self.settings.persistent_keepalive,
                api_server=self.api_server,
                on_failover=self._failed_over,
            )
        return self.several

    def _failed_over(self, old: HubRecord | None, new: HubRecord, why: str, down: bool) -> None:
        """Right after the route moved: log, metrics, status, and in the background the
        active-hub annotation on this Node (`wg-kube status`) and an Event."""
        self.on_active_hub(new.node, old is not None)
        self._state()
        self._wakeup.set()  # the reconcile tidies anything the move left
        self._background(self._annotate_active(new.node))
        if old is None:
            log.info("traffic goes through hub %s (%s)", new.node, why)
            return
        log.log(
            logging.WARNING if down else logging.INFO,
            "traffic moved from hub %s to hub %s: %s",
            old.node,
            new.node,
            why,
        )
        self._background(
            self._post_event(
                "Warning" if down else "Normal",
                HUB_FAILOVER if down else HUB_FAILBACK,
                f"traffic moved from hub {old.node} to hub {new.node}: {why}",
            )
        )

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _annotate_active(self, hub: str | None) -> None:
        """Best effort and after the fact: the API server may be behind the dead hub."""
        patch = {"metadata": {"annotations": {self.settings.keys.active_hub: hub}}}
        try:
            await self.api.patch_node(self.settings.node_name, patch)
        except KubeApiError as exc:
            log.warning("cannot note the active hub on node %s: %s", self.settings.node_name, exc)

    async def _post_event(self, type_: str, reason: str, message: str) -> None:
        try:
            await self.api.post_event(
                {"metadata": {"name": self.settings.node_name}},
                type_=type_,
                reason=reason,
                message=message,
                reporting_instance=self.settings.node_name,
            )
        except KubeApiError as exc:
            # The API server may be reachable only through the hub that just went.
            log.warning("cannot post the %s Event: %s", reason, exc)

    def desired(self) -> DesiredState:
        allowed = self.settings.hub_allowed_ips
        unsafe = unsafe_routes(self.hub, hub_allowed_ips=allowed, api_server=self.api_server)
        for why in unsafe.values():
            self._once("%s", why)
        return spoke_state(
            self.device,
            self.hub,
            hub_allowed_ips=allowed,
            persistent_keepalive=self.settings.persistent_keepalive,
            api_server=self.api_server,
        )

    def _state(self) -> None:
        if self._refused:
            text = "; ".join(self._refused[k] for k in sorted(self._refused))
        elif self.several is not None and self.several.hubs:
            active = self.several.active or "none yet"
            names = ", ".join(h.node for h in self.several.hubs)
            text = f"following hubs {names}; traffic through {active}"
        elif self.hub is None:
            text = f"waiting for the hub ({self._source()})"
        else:
            endpoint = self.hub.endpoint or "no endpoint"
            text = f"following hub {self.hub.node} at {endpoint}"
        if text != self._status:
            self._status = text
            self.status(text)

    def _source(self) -> str:
        if self.settings.hub_discovery == "node":
            return f"a Node labelled {self.settings.keys.hub_selector()}"
        return ANNOUNCEMENT

    def _once(self, message: str, *args: object, level: int = logging.WARNING) -> None:
        """Log a message once until the situation changes (not every poll)."""
        text = message % args
        if text not in self._said:
            self._said.add(text)
            log.log(level, "%s", text)

    # -- registration ---------------------------------------------------------------------
    def registration(self) -> dict[str, Any]:
        patch = registration_patch(
            self.settings.keys,
            role="peer",
            public_key=self.key.public_key(),
            allowed_ips=self.settings.advertised,
            endpoint=self.settings.own_endpoint,
        )
        if self.settings.own_endpoint is None:
            # Never delete an endpoint somebody annotated by hand.
            del patch["metadata"]["annotations"][self.settings.keys.endpoint]
        return patch

    def registered(self, node: NodeBody) -> bool:
        want = self.registration()["metadata"]
        have = node_annotations(node)
        return is_peer(node, self.settings.keys) and all(
            have.get(k) == v for k, v in want["annotations"].items()
        )

    async def register(self) -> None:
        try:
            await self.api.patch_node(self.settings.node_name, self.registration())
        except Forbidden as exc:
            self._refuse("register", f"patch Node {self.settings.node_name}", exc, GRANTS["own"])
            raise
        self._allowed("register")
        log.info(
            "registered node %s as a peer: public key %s, allowed-ips %s",
            self.settings.node_name,
            self.key.public_key(),
            ",".join(map(str, self.settings.advertised)),
        )

    async def _own_list(self, items: list[dict[str, Any]]) -> None:
        self._allowed("own")
        if not items:
            # On first boot the agent starts before the kubelet, which creates the Node:
            # the watch brings its ADDED event, and registration follows.
            self._once(
                "node %s does not exist in the API yet; registering once the kubelet creates it",
                self.settings.node_name,
                level=logging.INFO,
            )
            return
        await self._own_event("MODIFIED", items[0])

    async def _own_event(self, kind: str, node: dict[str, Any]) -> None:
        if kind != "DELETED" and not self.registered(node):
            self._register.set()

    # -- the hub, from the announcement ConfigMap (the default) ----------------------------
    async def _announcement_list(self, items: list[dict[str, Any]]) -> None:
        self._allowed("hub")
        self._announced(items[0] if items else None)

    async def _announcement_event(self, kind: str, obj: dict[str, Any]) -> None:
        self._announced(None if kind == "DELETED" else obj)

    def _announced(self, config_map: dict[str, Any] | None) -> None:
        """Only the hub's ServiceAccount can write this ConfigMap: what it says is trusted
        (and with a pinned key, only the hub holding that key)."""
        if config_map is None:
            if self.hub is None:
                self._once("no hub yet: waiting for %s", ANNOUNCEMENT, level=logging.INFO)
            else:
                self._once(
                    "%s is gone; keeping the last good hub configuration (%s)",
                    ANNOUNCEMENT,
                    self.hub.node,
                )
            self._state()
            return
        try:
            hubs = announcement.decode(config_map.get("data"))
            if len(hubs) > 1 and self.settings.pinned_hub_key is None:
                self._follow_several(hubs)
                return
            record = announcement.trusted_hub(hubs, self.settings.pinned_hub_key)
        except AnnouncementError as exc:
            what = "keeping the last good configuration" if self.hub else "waiting for a valid one"
            self._once("hub announcement refused, %s: %s", what, exc, level=logging.ERROR)
            self._state()
            return
        if len(hubs) > 1:
            self._once(
                "%d hubs are announced (%s); using %s",
                len(hubs),
                ", ".join(h.node for h in hubs),
                record.node,
            )
        self._follow(record)

    def _follow_several(self, hubs: tuple[HubRecord, ...]) -> None:
        """Several hubs (no pinned key): a device for each, traffic through the best one."""
        several = self.hub_set()
        before = several.hubs
        several.set_hubs(hubs)
        if several.hubs != before:
            log.info(
                "%d hubs are announced, in order of preference: %s; one interface each, "
                "traffic through the first that forwards",
                len(hubs),
                ", ".join(f"{h.node} (priority {h.priority})" for h in several.hubs),
            )
            self._said.clear()
        self._leave_several = False
        self._state()
        self._wakeup.set()

    def _follow(self, record: HubRecord) -> None:
        if self.several is not None and self.several.hubs:
            self._leave_several = True  # back to one hub: the reconcile loop tidies up
            self._synced = None
        if record != self.hub:
            log.info(
                "hub %s: public key %s, endpoint %s, allowed-ips %s",
                record.node,
                record.public_key,
                record.endpoint or "(none)",
                ",".join(map(str, record.allowed_ips)),
            )
            self.hub = record
            self._said.clear()
        self._state()
        self._wakeup.set()

    # -- the hub, from its Node (--hub-discovery=node) ----------------------------------------
    async def _hub_list(self, items: list[dict[str, Any]]) -> None:
        self._allowed("hub")
        self._hubs = {node_name(n): n for n in items if is_hub(n, self.settings.keys)}
        self._pick()

    async def _hub_event(self, kind: str, node: dict[str, Any]) -> None:
        name = node_name(node)
        if kind == "DELETED" or not is_hub(node, self.settings.keys):
            self._hubs.pop(name, None)
        else:
            self._hubs[name] = node
        self._pick()

    def _pick(self) -> None:
        chosen = choose_hub(list(self._hubs.values()))
        if chosen is None:
            if self.hub is None:
                self._once(
                    "no hub yet: waiting for a Node labelled %s",
                    self.settings.keys.hub_selector(),
                    level=logging.INFO,
                )
            else:
                self._once(
                    "the hub Node is gone; keeping the last good hub configuration (%s)",
                    self.hub.node,
                )
            return
        if len(self._hubs) > 1:
            self._once(
                "%d Nodes are labelled as hubs (%s); using %s (the oldest)",
                len(self._hubs),
                ", ".join(sorted(self._hubs)),
                node_name(chosen),
            )
        try:
            record = decode_hub(chosen, self.settings.keys)
            pinned = self.settings.pinned_hub_key
            if pinned is not None and record.public_key != pinned:
                raise AnnouncementError(
                    f"node {record.node} is labelled hub with public key {record.public_key}, "
                    f"not the pinned {pinned}"
                )
        except (AnnotationError, AnnouncementError) as exc:
            what = "keeping the last good configuration" if self.hub else "waiting for valid data"
            self._once("hub data unusable, %s: %s", what, exc, level=logging.ERROR)
            return
        self._follow(record)

    # -- errors -------------------------------------------------------------------------------
    def _refuse(self, stream: str, what: str, exc: Forbidden, grant: str) -> None:
        self._refused[stream] = f"permission denied to {what}"
        self._once(
            "permission denied to %s (%s): %s; the tunnel stays as it is, retrying slowly",
            what,
            exc,
            grant,
            level=logging.ERROR,
        )
        self._state()

    def _allowed(self, stream: str) -> None:
        if self._refused.pop(stream, None) is not None:
            log.info("permission problem resolved (%s)", stream)
            self._state()

    def _api_error_for(self, stream: str, what: str, grant: str) -> Any:
        async def on_error(exc: KubeApiError) -> None:
            if isinstance(exc, Forbidden):
                self._refuse(stream, what, exc, grant)
            else:
                self._once("API server unavailable (%s); the tunnel stays as it is, retrying", exc)

        return on_error

    # -- loops --------------------------------------------------------------------------
    def _hub_follower(self) -> Any:
        if self.settings.hub_discovery == "node":
            selector = self.settings.keys.hub_selector()
            return follow_nodes(
                self.api,
                label_selector=selector,
                on_list=self._hub_list,
                on_event=self._hub_event,
                on_error=self._api_error_for("hub", f"watch Nodes {selector}", GRANTS["node"]),
            )
        return follow_config_map(
            self.api,
            announcement.NAMESPACE,
            announcement.NAME,
            on_list=self._announcement_list,
            on_event=self._announcement_event,
            on_error=self._api_error_for("hub", f"watch {ANNOUNCEMENT}", GRANTS["configmap"]),
        )

    async def run(self) -> None:
        self.api_server = await api_server_addresses(self.api.host)
        self._state()
        own = self.settings.node_name
        tasks = [
            asyncio.create_task(
                follow_nodes(
                    self.api,
                    field_selector=f"metadata.name={own}",
                    on_list=self._own_list,
                    on_event=self._own_event,
                    on_error=self._api_error_for("own", f"watch Node {own}", GRANTS["own"]),
                ),
                name="own node",
            ),
            asyncio.create_task(self._hub_follower(), name="hub"),
            asyncio.create_task(self._registration_loop(), name="registration"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self.hub_set().run(), name="hub probes"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in [*tasks, *self._events]:
                task.cancel()
            await asyncio.gather(*tasks, *self._events, return_exceptions=True)

    async def _registration_loop(self) -> None:
        # Woken by the own-Node watch whenever the Node lacks our label or annotations.
        backoff = 0.5
        while True:
            await self._register.wait()
            self._register.clear()
            try:
                await self.register()
                backoff = 0.5
            except KubeApiError as exc:
                if isinstance(exc, Forbidden):
                    backoff = max(backoff, 5.0)  # logged as a permission problem
                else:
                    self._once(
                        "cannot register node %s: %s; retrying", self.settings.node_name, exc
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._register.set()

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval):
                    await self._wakeup.wait()
            self._wakeup.clear()
            try:
                several = self.several
                if several is not None and several.hubs and not self._leave_several:
                    ops = await several.reconcile()
                    self.hub = several.first
                    if ops:
                        log.info(
                            "tunnels to %d hubs in place (%d change(s))",
                            len(several.hubs),
                            len(ops),
                        )
                    self._state()
                    continue
                if several is not None and self._leave_several:
                    await several.leave()
                    self._leave_several = False
                    self._background(self._annotate_active(None))
                hub = self.hub
                ops = await self.reconciler.reconcile(self.desired())
                refusal = self.reconciler.refused.get(hub.public_key) if hub else None
                for net, why in sorted(self.reconciler.skipped_routes.items(), key=str):
                    self._once("hub %s: no route for %s: %s", hub.node if hub else "?", net, why)
                if hub is not None and refusal is not None:
                    # Not an error loop: the reconcile succeeded with the hub's peer held
                    # as it was; a new announcement lifts the refusal.
                    self._once(
                        "hub %s: %s; the tunnel keeps its last good state",
                        hub.node,
                        refusal.message,
                        level=logging.ERROR,
                    )
                elif hub is not None and hub != self._synced:
                    self._synced = hub
                    self._state()
                    log.info("tunnel to hub %s in place (%d change(s))", hub.node, len(ops))
            except WgKubeError as exc:
                log.error("reconcile failed: %s; retrying", exc)
                await asyncio.sleep(1.0)
                self._wakeup.set()

"""The hub assembled: key, kernel device, API client, peer registry and reconcile loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wgkube.desired.model import DesiredState, DeviceSpec, Rejection
from wgkube.desired.protected import api_server_protected, host_protected
from wgkube.desired.relay import RelayPolicy, relay_ports
from wgkube.domain import announcement
from wgkube.domain.annotations import (
    HubRecord,
    NodeBody,
    creation_time,
    node_address,
    node_annotations,
    node_labels,
    registration_patch,
)
from wgkube.domain.errors import AnnouncementError
from wgkube.domain.keys import PrivateKey, load_private_key
from wgkube.kernel import Kernel, open_kernel
from wgkube.kernel.base import RtnlBackedKernel
from wgkube.kube.address import api_server_addresses
from wgkube.kube.client import Api, Configuration, Forbidden, KubeApiError, load_configuration
from wgkube.kube.watch import follow, follow_config_map
from wgkube.observe.book import HealthBook
from wgkube.observe.metrics import Metrics, thresholds
from wgkube.operator.loop import Guard, HubLoop
from wgkube.operator.registry import PeerRegistry
from wgkube.operator.relay import HubRelay
from wgkube.operator.settings import HubSettings
from wgkube.reconcile import Reconciler

log = logging.getLogger("wgkube.hub")

MANIFESTS_RBAC = "manifests/10-rbac.yaml"
"""Where the grants named in permission errors live."""
NODES_ROLE = "the ClusterRole wg-kube-hub (nodes: get, list, watch, patch)"
ANNOUNCEMENT_ROLE = "the Role wg-kube-hub-announcement (namespace wg-kube, configmaps)"
LIST_PAGE = 500
"""Nodes per page of the hub's Node list."""


def load_key(settings: HubSettings) -> PrivateKey:
    key, created = load_private_key(settings.key_path, create=True)
    verb = "generated a new" if created else "loaded the"
    log.info("%s private key %s (public key %s)", verb, settings.key_path, key.public_key())
    return key


def device_spec(settings: HubSettings, key: PrivateKey) -> DeviceSpec:
    return DeviceSpec(
        name=settings.interface,
        private_key=key,
        listen_port=settings.listen_port,
        addresses=settings.address,
        mtu=settings.mtu,
    )


def ensure_forwarding(settings: HubSettings) -> None:
    """The hub routes spoke to spoke when it advertises more than its own addresses."""
    if not settings.routes_between_spokes():
        return
    for version in sorted({net.version for net in settings.advertised}):
        path = Path(
            "/proc/sys/net/ipv4/ip_forward"
            if version == 4
            else "/proc/sys/net/ipv6/conf/all/forwarding"
        )
        try:
            if path.read_text().strip() == "1":
                continue
            path.write_text("1\n")
            log.info("enabled IPv%d forwarding (%s) so spokes can reach each other", version, path)
        except OSError as exc:
            log.warning(
                "allowed-ips %s reach beyond the hub's address but IPv%d forwarding is off and "
                "cannot be enabled (%s): spokes will not reach each other through the hub",
                ",".join(map(str, settings.advertised)),
                version,
                exc,
            )
    loosen_rp_filter(settings.interface)


def loosen_rp_filter(interface: str) -> None:
    """Loose reverse-path filtering (2) on the WireGuard interface: with strict (1) in
    `all` (the kernel takes the maximum of `all` and the interface), a spoke's packet is
    dropped whenever the hub's route back to its source leaves by another interface (a
    hub with several underlay NICs, or a source a spoke forwards for)."""
    path = Path(f"/proc/sys/net/ipv4/conf/{interface}/rp_filter")
    if not path.exists():
        return  # no such interface here (the memory backend of tests)
    try:
        if path.read_text().strip() != "2":
            path.write_text("2\n")
            log.info("set %s to 2 (loose) so replies through the hub are not dropped", path)
    except OSError as exc:
        log.warning("cannot set %s to 2 (loose): %s", path, exc)


async def post_rejection(
    api: Api, peers: PeerRegistry, reporting_instance: str, rejection: Rejection
) -> None:
    """A Warning Event on the Node whose WireGuard data was rejected."""
    ref = peers.ref(rejection.node)
    await api.post_event(
        {"metadata": {"name": ref.name, "uid": ref.uid}},
        type_="Warning",
        reason=rejection.reason,
        message=rejection.message,
        reporting_instance=reporting_instance,
    )


async def read_guard(settings: HubSettings, kernel: Kernel, api_url: str) -> Guard:
    """What no spoke may capture: the API server, this host's addresses, gateways and
    connected networks (real kernels only: the memory kernel has no host), and the
    endpoints WireGuard learned. Read at start and at every resync: a few dumps."""
    protected = api_server_protected(await api_server_addresses(api_url))
    if isinstance(kernel, RtnlBackedKernel):
        addresses, routes = await kernel.rtnl.host(skip_protocol=settings.route_protocol)
        protected += host_protected(
            addresses, routes, wireguard=settings.interface, own_protocol=settings.route_protocol
        )
    peers = await kernel.peers(settings.interface) or {}  # one device dump, no routes
    learned = {k: p.endpoint for k, p in peers.items() if p.endpoint is not None}
    return protected, learned


def peer_fields(node: dict[str, Any]) -> dict[str, Any]:
    """What the registry reads of a Node (its metadata without managedFields, and the
    addresses that default allowed-ips): not the conditions, images and node info."""
    meta = {k: v for k, v in (node.get("metadata") or {}).items() if k != "managedFields"}
    addresses = (node.get("status") or {}).get("addresses") or []
    return {"metadata": meta, "status": {"addresses": addresses}}


async def relist_peers(api: Api, peers: PeerRegistry, problems: Problems) -> None:
    """An authoritative list on every resync (it catches deletions a broken watch
    missed). Watch events that land while it is in flight are newer and win by
    resourceVersion."""
    await list_peers(api, peers, problems)


async def list_peers(api: Api, peers: PeerRegistry, problems: Problems) -> str:
    """An authoritative list of the peer Nodes into the registry, page by page (what
    the registry reads of each: peer_fields); returns the list's resourceVersion."""
    listing = peers.listing()
    version = ""
    with problems.track("list Nodes", NODES_ROLE):
        # Peers only (the selector keeps other Nodes out of memory), in pages. Not
        # resourceVersion=0: kube-apiserver (1.37 too) then ignores `limit` and answers
        # all 10,000 Nodes at once (~40 MB of JSON, several times that parsed); a
        # paginated consistent list is served from its watch cache by recent servers.
        async for page, at in api.node_pages(f"{peers.keys.peer}=true", page=LIST_PAGE):
            for node in page:
                listing.add(peer_fields(node))
            version = at
    if listing.finish(version):
        log.info("Node list applied: %d peer Node(s) known", len(peers))
    return version


@dataclass
class Problems:
    """Permission problems now in force, by what was refused: shown in /readyz and logged
    as what they are (a 403 is a missing grant, not an outage)."""

    current: dict[str, str] = field(default_factory=dict)

    def refused(self, what: str, granted_by: str, exc: Forbidden) -> None:
        message = (
            f"permission denied to {what}: {exc}; the hub's ServiceAccount wg-kube/wg-kube "
            f"gets it from {granted_by} in {MANIFESTS_RBAC}: apply it; retrying slowly"
        )
        if self.current.get(what) != message:
            log.error("%s", message)
        self.current[what] = message

    def granted(self, what: str) -> None:
        if self.current.pop(what, None) is not None:
            log.info("permission to %s granted again", what)

    @contextlib.contextmanager
    def track(self, what: str, granted_by: str) -> Iterator[None]:
        try:
            yield
        except Forbidden as exc:
            self.refused(what, granted_by, exc)
            raise
        self.granted(what)


@dataclass
class Hub:
    settings: HubSettings
    key: PrivateKey
    kernel: Kernel
    configuration: Configuration
    api: Api
    peers: PeerRegistry
    loop: HubLoop
    metrics: Metrics
    problems: Problems = field(default_factory=Problems)
    peers_listed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by follow_peers' first complete list: the loop reconciles nothing before it."""
    node: NodeBody | None = None
    """The hub's own Node as last seen (its ExternalIP gives the endpoint)."""
    _seen: tuple[NodeBody | None] | None = None
    """The announcement ConfigMap as last listed or watched ((None,): absent; None: not
    listed yet, so nothing is published before the first list)."""
    _publish: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, settings: HubSettings, *, keep_addresses: bool = False) -> Hub:
        """Key and device: the interface exists (adopted or created) before any watch starts.
        `keep_addresses`: this hub's own address is not known (its Node could not be
        read), so an existing device keeps the addresses it has."""
        key = load_key(settings)
        kernel = await open_kernel(settings.backend, route_protocol=settings.route_protocol)
        log.info("WireGuard backend: %s", kernel.name)
        device = device_spec(settings, key)
        if keep_addresses:
            observed = await kernel.observe(settings.interface)
            if observed.exists and observed.addresses:
                device = replace(device, addresses=tuple(sorted(observed.addresses, key=str)))
        peers = PeerRegistry(
            settings.keys, settings.node_name, max_prefixes=settings.max_peer_prefixes
        )
        metrics = Metrics(
            kernel,
            settings.interface,
            "hub",
            HealthBook(thresholds(settings.health_handshake_limit, settings.health_keepalive)),
            names=lambda: {r.public_key: r.node for r in peers.records()},
            reasons=lambda: loop.stats.rejected_by_reason,
        )
        reconciler = Reconciler(kernel, observer=metrics.reconcile)
        await reconciler.reconcile(DesiredState(device=device, peers=None))
        ensure_forwarding(settings)
        configuration = await load_configuration(settings.kubeconfig)
        api = Api.from_configuration(configuration)
        problems = Problems()
        listed = asyncio.Event()
        loop = HubLoop(
            device=device,
            reconciler=reconciler,
            registry=peers,
            report=functools.partial(post_rejection, api, peers, settings.node_name),
            relist=functools.partial(relist_peers, api, peers, problems),
            first_list=listed.wait,
            debounce=settings.debounce,
            resync_interval=settings.resync_interval,
            kernel_resync_interval=settings.kernel_resync_interval,
            persistent_keepalive=settings.persistent_keepalive,
            guard=functools.partial(read_guard, settings, kernel, str(configuration.host)),
            peer_cidrs=settings.peer_cidrs,
        )
        loop.relay = HubRelay(
            kernel,
            reconciler,
            device,
            settings.node_name,
            RelayPolicy(
                interval=settings.relay_echo_interval,
                misses=settings.relay_echo_misses,
                hold_down=settings.relay_hold_down,
            ),
            persistent_keepalive=settings.persistent_keepalive or 25,
            names=lambda: {r.public_key: r.node for r in peers.records()},
            loosen=loosen_rp_filter,
        )
        return cls(
            settings,
            key,
            kernel,
            configuration,
            api,
            peers,
            loop,
            metrics,
            problems,
            peers_listed=listed,
        )

    def announcement(self, node: NodeBody) -> dict[str, Any]:
        """The merge patch that publishes the hub on `node` as it is now (its ExternalIP)."""
        settings = self.settings
        external = node_address(node, "ExternalIP")
        endpoint = settings.published_endpoint(str(external) if external else None)
        return registration_patch(
            settings.keys,
            role="hub",
            public_key=self.key.public_key(),
            allowed_ips=settings.advertised,
            endpoint=endpoint,
        )

    def announced(self, node: NodeBody) -> bool:
        """Whether `node` carries exactly what the hub publishes."""
        meta = self.announcement(node)["metadata"]
        have = node_annotations(node)
        return node_labels(node).get(self.settings.keys.hub) == "true" and all(
            have.get(key) == value for key, value in meta["annotations"].items()
        )

    async def announce(self, node: NodeBody | None = None) -> None:
        """Label the hub's own Node and publish its public key, endpoint and allowed-ips.

        Called at start and whenever the Node stops carrying them (someone removed them,
        or its ExternalIP changed).
        """
        settings = self.settings
        if node is None:
            with self.problems.track("read the hub's Node", NODES_ROLE):
                node = await self.api.get_node(settings.node_name)
        self.node = node
        patch = self.announcement(node)
        endpoint = patch["metadata"]["annotations"][settings.keys.endpoint]
        if endpoint is None:
            log.warning(
                "node %s has no ExternalIP and no --endpoint was given: publishing no endpoint; "
                "spokes cannot dial the hub until one is set",
                settings.node_name,
            )
        with self.problems.track("patch the hub's Node", NODES_ROLE):
            await self.api.patch_node(settings.node_name, patch)
        self._publish.set()
        log.info(
            "announced node %s as the hub: endpoint %s, allowed-ips %s",
            settings.node_name,
            endpoint or "(none)",
            ",".join(map(str, settings.advertised)),
        )

    # -- the announcement ConfigMap (what spokes read: wgkube.domain.announcement) -------
    def record(self) -> HubRecord:
        """This hub as spokes should see it, from its Node as last seen."""
        external = node_address(self.node or {}, "ExternalIP")
        return HubRecord(
            node=self.settings.node_name,
            public_key=self.key.public_key(),
            endpoint=self.settings.published_endpoint(str(external) if external else None),
            allowed_ips=self.settings.advertised,
            internal_ip=node_address(self.node or {}, "InternalIP"),
            router_prefixes=self.settings.router_prefixes,
            # Several hubs: every spoke orders them by these (wgkube.desired.failover).
            priority=self.settings.hub_priority,
            created=creation_time(self.node or {}),
            addresses=tuple(ipaddress.ip_network(a.ip) for a in self.settings.address),
            # Several hubs: the relay interface this hub keeps for each other hub.
            relay_ports=relay_ports(
                self.settings.node_name, self.loop.hubs, self.settings.listen_port
            ),
        )

    def saw_own_node(self, node: NodeBody) -> None:
        """The hub's Node as watched: republish when what the announcement says of it
        changed (its InternalIP moves routers' gateways; nothing in its annotations)."""
        before = self.record()
        self.node = node
        if self.record() != before:
            self._publish.set()

    def wanted_data(self, config_map: NodeBody | None) -> dict[str, str]:
        """The announcement's data with this hub's entry as it is now, other hubs kept."""
        others: tuple[HubRecord, ...] = ()
        if config_map is not None:
            try:
                others = announcement.decode(config_map.get("data"))
            except AnnouncementError as exc:
                log.warning("replacing an unusable hub announcement: %s", exc)
        return announcement.encode(announcement.with_hub(others, self.record()))

    async def publish(self, config_map: NodeBody | None) -> None:
        """Create or update the ConfigMap so that it carries this hub's entry as it is now.

        `config_map` is the object as last listed or watched (None: absent). Nothing is
        written when it already says the same; no read is needed (the watch has it), so
        the hub's Role grants no `get`.
        """
        ns, name = announcement.NAMESPACE, announcement.NAME
        data = self.wanted_data(config_map)
        if config_map is not None and (config_map.get("data") or {}) == data:
            return
        with self.problems.track(f"write ConfigMap {ns}/{name}", ANNOUNCEMENT_ROLE):
            if config_map is not None:
                # Merge patch: keys this hub does not write are removed, so the data is ours.
                stale = {k: None for k in (config_map.get("data") or {}) if k not in data}
                try:
                    await self.api.patch_config_map(ns, name, {"data": {**stale, **data}})
                except KubeApiError as exc:
                    if exc.status != 404:
                        raise
                    config_map = None  # deleted since it was seen
            if config_map is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "labels": {"app.kubernetes.io/name": "wg-kube"},
                    },
                    "data": data,
                }
                try:
                    await self.api.create_config_map(ns, body)
                except KubeApiError as exc:
                    if exc.status != 409:
                        raise
                    await self.api.patch_config_map(ns, name, {"data": data})
        log.info(
            "published the hub announcement in ConfigMap %s/%s: endpoint %s",
            ns,
            name,
            self.record().endpoint or "(none)",
        )

    async def keep_published(self, resync_interval: float = 60.0) -> None:
        """Publish the announcement, and re-assert it whenever someone changes or deletes
        it or the hub's endpoint changes (as the hub's own Node annotations are)."""
        what = f"watch ConfigMap {announcement.NAMESPACE}/{announcement.NAME}"

        async def on_list(items: list[dict[str, Any]]) -> None:
            self.problems.granted(what)
            self._seen = (items[0] if items else None,)
            self._follow_hubs()
            self._publish.set()

        async def on_event(kind: str, obj: dict[str, Any]) -> None:
            self._seen = (None if kind == "DELETED" else obj,)
            self._follow_hubs()
            self._publish.set()

        async def on_error(exc: KubeApiError) -> None:
            if isinstance(exc, Forbidden):
                self.problems.refused(what, ANNOUNCEMENT_ROLE, exc)
            else:
                log.warning("following the hub announcement failed: %s; retrying", exc)

        follower = asyncio.create_task(
            follow_config_map(
                self.api,
                announcement.NAMESPACE,
                announcement.NAME,
                on_list=on_list,
                on_event=on_event,
                on_error=on_error,
            )
        )
        try:
            await self._publisher(resync_interval)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def follow_peers(self) -> None:
        """The peer Nodes: one paginated list, the registry's first authoritative one (the
        loop reconciles nothing before it), then a watch from that list's version, with
        the peer label as a server-side selector (unlabelling arrives as DELETED).

        The hub's own list and watch, not Kopf's: Kopf would list the 10,000 Nodes a
        second time, whole, and run a worker per Node; at 10,000 kubelet-sized Nodes that
        was a third of the start-up and ~120 MB (README, Performance). The list goes into
        the registry page by page and the watch keeps of each Node what the registry
        reads (peer_fields): no Node is held whole beyond its page or its event."""
        selector = f"{self.settings.keys.peer}=true"

        async def lister() -> tuple[list[dict[str, Any]], str]:
            # Into the registry page by page (list_peers): nothing is left to hand on.
            return [], await list_peers(self.api, self.peers, self.problems)

        async def on_list(_: list[dict[str, Any]]) -> None:
            self.loop.wake()
            self.peers_listed.set()

        async def tracked(
            events: AsyncIterator[tuple[str, dict[str, Any]]],
        ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
            with self.problems.track("watch Nodes", NODES_ROLE):
                async for item in events:
                    yield item

        def watcher(since: str, timeout: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
            return tracked(
                self.api.watch_nodes(
                    label_selector=selector, resource_version=since, timeout_seconds=timeout
                )
            )

        async def on_event(kind: str, node: dict[str, Any]) -> None:
            if self.peers.observe(peer_fields(node), deleted=kind == "DELETED"):
                self.loop.wake()

        async def on_error(exc: KubeApiError) -> None:
            if isinstance(exc, Forbidden):  # logged by Problems, as a missing grant
                return
            if not self.peers_listed.is_set():
                log.warning("cannot list Nodes yet (%s); the kernel stays as it is", exc)
            else:
                log.warning("following the peer Nodes failed: %s; listing again", exc)

        await follow(
            "peer Nodes", lister, watcher, on_list=on_list, on_event=on_event, on_error=on_error
        )

    def _follow_hubs(self) -> None:
        """The other announced hubs become peers on their own addresses (desired.hub_state);
        a deleted or unusable announcement keeps the last good set."""
        seen = self._seen[0] if self._seen else None
        if seen is None:
            if self._seen is not None and self.loop.relay is not None:
                self.loop.relay.announced_none()  # listed, and absent
            return
        try:
            hubs = announcement.decode(seen.get("data"))
        except AnnouncementError:
            return  # logged when it is replaced (wanted_data)
        others = tuple(h for h in hubs if h.node != self.settings.node_name)
        if self.loop.relay is not None:
            self.loop.relay.set_hubs(others)
        if others != self.loop.hubs:
            self.loop.hubs = others
            log.info("hub peers: %s", ", ".join(h.node for h in others) or "none")
            self.loop.wake()
            self._publish.set()  # the relay ports announced follow the other hubs

    async def _publisher(self, resync_interval: float) -> None:
        backoff = 0.5
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(resync_interval):
                    await self._publish.wait()
            self._publish.clear()
            seen = self._seen
            if seen is None:
                continue  # the follower's first list wakes us
            try:
                await self.publish(seen[0])
                backoff = 0.5
            except KubeApiError as exc:
                if isinstance(exc, Forbidden):
                    backoff = max(backoff, 5.0)  # a missing grant (logged): ask slowly
                else:
                    log.warning("publishing the hub announcement failed: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._publish.set()

    async def announce_until_done(self, stop: asyncio.Event) -> bool:
        """Retry with backoff while the API is unreachable; False when stopped first."""
        delay = 0.5
        while not stop.is_set():
            try:
                await self.announce()
                return True
            except KubeApiError as exc:
                if isinstance(exc, Forbidden):
                    delay = max(delay, 5.0)  # a missing grant: ask slowly (logged above)
                else:
                    log.warning("announcing the hub failed: %s; retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                delay = min(delay * 2, 30.0)
        return False

    async def close(self) -> None:
        await self.api.close()
        await self.kernel.close()
        # The interface and its peers stay: stopping the hub must not cut anyone off.
        log.info("stopped; interface %s left in place", self.settings.interface)

"""The hub assembled: key, kernel device, API client, peer registry and reconcile loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from wgkube.desired.model import DesiredState, DeviceSpec, Rejection
from wgkube.domain.annotations import (
    NodeBody,
    node_address,
    node_annotations,
    node_labels,
    registration_patch,
)
from wgkube.domain.keys import PrivateKey, load_private_key
from wgkube.kernel import Kernel, open_kernel
from wgkube.kube.client import Api, KubeApiError, load_configuration
from wgkube.observe.book import HealthBook
from wgkube.observe.metrics import Metrics, thresholds
from wgkube.operator.loop import HubLoop
from wgkube.operator.registry import PeerRegistry
from wgkube.operator.settings import HubSettings
from wgkube.reconcile import Reconciler

log = logging.getLogger("wgkube.hub")


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


async def relist_peers(api: Api, peers: PeerRegistry) -> None:
    """An authoritative list: at start (the registry is complete only then) and on every
    resync (it catches deletions a broken watch missed). Watch events that land while it
    is in flight are newer and win by resourceVersion."""
    nodes, version = await api.list_nodes()
    if peers.replace_all(nodes, version):
        log.info("Node list applied: %d peer Node(s) known", len(peers))


@dataclass
class Hub:
    settings: HubSettings
    key: PrivateKey
    kernel: Kernel
    configuration: client.Configuration
    api: Api
    peers: PeerRegistry
    loop: HubLoop
    metrics: Metrics

    @classmethod
    async def start(cls, settings: HubSettings) -> Hub:
        """Key and device first: the interface exists (adopted or created) before any API call."""
        key = load_key(settings)
        kernel = await open_kernel(settings.backend, route_protocol=settings.route_protocol)
        log.info("WireGuard backend: %s", kernel.name)
        device = device_spec(settings, key)
        peers = PeerRegistry(settings.keys, settings.node_name)
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
        loop = HubLoop(
            device=device,
            reconciler=reconciler,
            registry=peers,
            report=functools.partial(post_rejection, api, peers, settings.node_name),
            relist=functools.partial(relist_peers, api, peers),
            debounce=settings.debounce,
            resync_interval=settings.resync_interval,
            persistent_keepalive=settings.persistent_keepalive,
        )
        return cls(settings, key, kernel, configuration, api, peers, loop, metrics)

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
            node = await self.api.get_node(settings.node_name)
        patch = self.announcement(node)
        endpoint = patch["metadata"]["annotations"][settings.keys.endpoint]
        if endpoint is None:
            log.warning(
                "node %s has no ExternalIP and no --endpoint was given: publishing no endpoint; "
                "spokes cannot dial the hub until one is set",
                settings.node_name,
            )
        await self.api.patch_node(settings.node_name, patch)
        log.info(
            "announced node %s as the hub: endpoint %s, allowed-ips %s",
            settings.node_name,
            endpoint or "(none)",
            ",".join(map(str, settings.advertised)),
        )

    async def announce_until_done(self, stop: asyncio.Event) -> bool:
        """Retry with backoff while the API is unreachable; False when stopped first."""
        delay = 0.5
        while not stop.is_set():
            try:
                await self.announce()
                return True
            except KubeApiError as exc:
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

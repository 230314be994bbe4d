"""`wg-kube hub`: start-up (key, device, own Node), then Kopf and the reconcile loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import kopf

from wgkube.config import SettingsError, fail, parse_settings
from wgkube.desired.model import DesiredState, DeviceSpec, Rejection
from wgkube.domain.annotations import node_address, registration_patch
from wgkube.domain.errors import KernelError, KeyFileError, WgKubeError
from wgkube.domain.keys import PrivateKey, load_private_key
from wgkube.kernel import open_kernel
from wgkube.kube.client import Api, KubeApiError, load_configuration
from wgkube.operator.kopf_app import build_registry
from wgkube.operator.loop import HubLoop
from wgkube.operator.probes import serve_probes
from wgkube.operator.registry import PeerRegistry
from wgkube.operator.settings import HubSettings
from wgkube.reconcile import Reconciler

log = logging.getLogger("wgkube.hub")

DESCRIPTION = "Run the wg-kube hub operator: program this node's WireGuard hub from Node objects."


def run(argv: Sequence[str]) -> int:
    try:
        settings = parse_settings(HubSettings, argv, prog="wg-kube hub", description=DESCRIPTION)
    except SettingsError as exc:
        return fail("wg-kube hub", exc)
    setup_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except KeyFileError as exc:
        log.critical("cannot use the hub's private key: %s", exc)
        return 1
    except KernelError as exc:
        log.critical("cannot set up the WireGuard device: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # Kopf is chatty at INFO about every handler; keep its warnings.
    logging.getLogger("kopf").setLevel(max(logging.WARNING, logging.getLogger().level))


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
    versions = {net.version for net in settings.advertised}
    for version in sorted(versions):
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


async def announce(api: Api, settings: HubSettings, key: PrivateKey) -> None:
    """Label the hub's own Node and publish its public key, endpoint and allowed-ips."""
    node = await api.get_node(settings.node_name)
    external = node_address(node, "ExternalIP")
    endpoint = settings.published_endpoint(str(external) if external else None)
    if endpoint is None:
        log.warning(
            "node %s has no ExternalIP and no --endpoint was given: publishing no endpoint; "
            "spokes cannot dial the hub until one is set",
            settings.node_name,
        )
    patch = registration_patch(
        settings.keys,
        role="hub",
        public_key=key.public_key(),
        allowed_ips=settings.advertised,
        endpoint=endpoint,
    )
    await api.patch_node(settings.node_name, patch)
    log.info(
        "announced node %s as the hub: endpoint %s, allowed-ips %s",
        settings.node_name,
        endpoint or "(none)",
        ",".join(map(str, settings.advertised)),
    )


async def retry(what: str, action: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    delay = 0.5
    while not stop.is_set():
        try:
            await action()
            return
        except KubeApiError as exc:
            log.warning("%s failed: %s; retrying in %.1fs", what, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)


async def serve(settings: HubSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    key = load_key(settings)
    kernel = await open_kernel(settings.backend, route_protocol=settings.route_protocol)
    log.info("WireGuard backend: %s", kernel.name)
    device = device_spec(settings, key)
    reconciler = Reconciler(kernel)
    # The device first: it exists (adopted unchanged, or created) before any API call.
    await reconciler.reconcile(DesiredState(device=device, peers=None))
    ensure_forwarding(settings)

    configuration = await load_configuration(settings.kubeconfig)
    api = Api.from_configuration(configuration)
    peers = PeerRegistry(settings.keys, settings.node_name)

    async def report(rejection: Rejection) -> None:
        ref = peers.ref(rejection.node)
        await api.post_event(
            {"metadata": {"name": ref.name, "uid": ref.uid}},
            type_="Warning",
            reason=rejection.reason,
            message=rejection.message,
            reporting_instance=settings.node_name,
        )

    async def relist() -> None:
        nodes, _ = await api.list_nodes()
        if peers.replace_all(nodes):
            log.info("resync: the Node list differed from the watch; registry corrected")

    hub = HubLoop(
        device=device,
        reconciler=reconciler,
        registry=peers,
        report=report,
        relist=relist,
        debounce=settings.debounce,
        resync_interval=settings.resync_interval,
        persistent_keepalive=settings.persistent_keepalive,
    )
    registry = build_registry(peers, hub, configuration)
    tasks: list[asyncio.Task[None]] = []
    try:
        await retry("announcing the hub on its Node", lambda: announce(api, settings, key), stop)
        if stop.is_set():
            return
        tasks = [
            asyncio.create_task(hub.run(), name="reconcile loop"),
            asyncio.create_task(
                kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop),
                name="kopf",
            ),
        ]
        if settings.probe_address:
            tasks.append(asyncio.create_task(serve_probes(settings.probe_address, hub, stop)))
        done, _ = await asyncio.wait(
            [*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await kernel.close()
        # The interface and its peers stay: stopping the hub must not cut anyone off.
        log.info("stopped; interface %s left in place", settings.interface)


__all__ = ["WgKubeError", "run"]

"""`wg-kube hub`: start-up (key, device, own Node), then Kopf and the reconcile loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import kopf

from wgkube.config import SettingsError, fail, parse_settings
from wgkube.domain.annotations import node_annotations
from wgkube.domain.errors import SetupError
from wgkube.kernel import check_ipv6
from wgkube.kube.client import Api, KubeApiError
from wgkube.observe.metrics import serve_metrics
from wgkube.observe.report import HubReporter
from wgkube.operator.hub import MANIFESTS_RBAC, NODES_ROLE, Hub
from wgkube.operator.kopf_app import install
from wgkube.operator.probes import serve_probes
from wgkube.operator.settings import HubSettings
from wgkube.startup import check_api, run_checked

log = logging.getLogger("wgkube.hub")

DESCRIPTION = "Run the wg-kube hub operator: program this node's WireGuard hub from Node objects."


def run(argv: Sequence[str]) -> int:
    try:
        settings = parse_settings(HubSettings, argv, prog="wg-kube hub", description=DESCRIPTION)
    except SettingsError as exc:
        return fail("wg-kube hub", exc)
    setup_logging(settings.log_level)

    def body() -> int:
        if settings.backend != "memory":
            check_ipv6(settings.address)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
        return 0

    return run_checked("wg-kube hub", HubSettings, body)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # Kopf is chatty at INFO about every handler; keep its warnings.
    logging.getLogger("kopf").setLevel(max(logging.WARNING, logging.getLogger().level))


async def serve(settings: HubSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    own = await own_node_settings(settings)
    hub = await Hub.start(own or settings, keep_addresses=own is None)
    try:
        await check_api(hub.api, settings.kubeconfig, settings.node_name)
        later = None if own is not None else await own_node_settings(settings)
        if later is not None and set(later.address) != set(hub.loop.device.addresses):
            raise SetupError(
                f"node {settings.node_name}: the API server answered only after the device "
                "was set up, without this hub's own address: start again"
            )
    except BaseException:
        await hub.close()
        raise
    registry = kopf.OperatorRegistry()
    install(registry, lambda: hub)
    tasks: list[asyncio.Task[None]] = []
    try:
        if not await hub.announce_until_done(stop):
            return
        tasks = [
            asyncio.create_task(hub.loop.run(), name="reconcile loop"),
            asyncio.create_task(hub.follow_peers(), name="peer Nodes"),
            asyncio.create_task(hub.keep_published(), name="announcement"),
        ]
        if hub.loop.relay is not None:  # idle (no socket, no echo) while there is one hub
            tasks.append(asyncio.create_task(hub.loop.relay.run(), name="relays"))
        tasks += [
            asyncio.create_task(
                # No stop_flag: Kopf takes SIGTERM/SIGINT itself and returns; a flag that
                # nobody sets would hold its exit for 5 s as a "hung task".
                kopf.operator(registry=registry, clusterwide=True, standalone=True),
                name="kopf",
            ),
        ]
        if settings.probe_address:
            tasks.append(
                asyncio.create_task(
                    serve_probes(settings.probe_address, hub.loop, stop, hub.problems.current)
                )
            )
        tasks += observe(hub, stop)
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
        await hub.close()


async def own_node_settings(settings: HubSettings) -> HubSettings | None:
    """The settings with this hub's own address and priority from its Node's annotations
    (HubSettings.for_node), read before the device is touched: a hub must never come up
    on another hub's address. A Node not registered yet has none (a warning)."""
    try:
        connected = await Api.connect(settings.kubeconfig)
    except SetupError:
        return None  # the same error ends the start after the local checks
    async with connected as api:
        try:
            await check_api(api, settings.kubeconfig, settings.node_name)
        except SetupError as exc:
            # The API cannot tell this hub its own address (None): the local checks
            # (key, kernel, device) still come first, on the device's addresses as they
            # are, and the same API check after them ends the start with its one line.
            log.warning("cannot read node %s first: %s", settings.node_name, exc)
            return None
        try:
            node = await api.get_node(settings.node_name)
        except KubeApiError as exc:
            if exc.status != 404:
                raise SetupError(
                    f"cannot read node {settings.node_name} for its own hub address and "
                    f"priority ({exc}); the hub needs {NODES_ROLE} ({MANIFESTS_RBAC})"
                ) from exc
            log.warning(
                "node %s is not registered yet: using --address and --hub-priority",
                settings.node_name,
            )
            return settings
    own = settings.for_node(node_annotations(node))
    if own is not settings:
        log.info(
            "node %s: overlay address %s, priority %d (its annotations)",
            settings.node_name,
            ",".join(map(str, own.address)),
            own.hub_priority,
        )
        if own.backend != "memory" and own.address != settings.address:
            check_ipv6(own.address)
    return own


def observe(hub: Hub, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """/metrics, and peer health as Events and the hub's Node condition."""
    settings = hub.settings
    reporter = HubReporter(
        hub.metrics,
        hub.api,
        settings.keys,
        settings.node_name,
        uid_of=lambda name: hub.peers.ref(name).uid,
        rejected=lambda: hub.loop.stats.rejected_nodes,
        interval=settings.health_interval,
        heartbeat=settings.health_heartbeat,
    )

    async def report() -> None:
        # The first look after the first reconcile (or its failure): before it the
        # interface may not exist yet and the rejections are unknown, and a first
        # condition written too early would stand for a whole interval.
        await hub.loop.listed.wait()
        # The loop counts its reconciles (it signals none): a few 50 ms polls, once.
        while not (hub.loop.stats.reconciles or hub.loop.stats.failures):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await reporter.run()

    tasks = [asyncio.create_task(report(), name="peer health")]
    if settings.metrics_address:
        tasks.append(
            asyncio.create_task(serve_metrics(settings.metrics_address, hub.metrics, stop))
        )
    return tasks


__all__ = ["run"]

"""`wg-kube spoke`: interface first, then (optionally in the background) register and follow."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge

from wgkube.config import SettingsError, fail, parse_settings
from wgkube.desired.model import DesiredState
from wgkube.desired.spoke import MAX_HUBS, hub_interface_name
from wgkube.domain.annotations import HubRecord
from wgkube.domain.errors import KubeconfigError
from wgkube.domain.keys import PrivateKey, PublicKey, load_private_key
from wgkube.kernel import Kernel, check_ipv6, open_kernel
from wgkube.kube.client import Api, KubeApiError
from wgkube.observe.book import HealthBook
from wgkube.observe.metrics import Metrics, serve_metrics, thresholds
from wgkube.observe.report import SpokeReporter
from wgkube.reconcile import Reconciler
from wgkube.spoke_agent.agent import SpokeAgent, device_spec
from wgkube.spoke_agent.settings import SpokeSettings
from wgkube.startup import check_api, run_checked

log = logging.getLogger("wgkube.spoke")

DESCRIPTION = "Run the wg-kube spoke agent: register this Node and keep a tunnel to the hub."


def run(argv: Sequence[str]) -> int:
    try:
        settings = parse_settings(
            SpokeSettings, argv, prog="wg-kube spoke", description=DESCRIPTION
        )
    except SettingsError as exc:
        return fail("wg-kube spoke", exc)
    setup_logging(settings.log_level)
    return run_checked("wg-kube spoke", SpokeSettings, lambda: start(settings))


def start(settings: SpokeSettings) -> int:
    """Key, interface, then the API; an expected failure raises for `run_checked`."""
    key = load_private_key(settings.key_path, create=not settings.down)[0]
    if settings.down:
        asyncio.run(down(settings, key))
        return 0
    if settings.backend != "memory":
        check_ipv6(settings.address)
    # The interface and its address exist before any API call, so a kubelet started
    # right after us can bind --node-ip to the WireGuard address. A bad kubeconfig found
    # after this leaves the interface up.
    asyncio.run(bring_up(settings, key))
    if settings.daemonize and not daemonize(settings):
        return 0  # the parent returns; the child carries on below
    notify("READY=1")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, key))
    return 0


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )


async def bring_up(settings: SpokeSettings, key: PrivateKey) -> None:
    kernel = await open_kernel(settings.backend, route_protocol=settings.route_protocol)
    try:
        log.info("WireGuard backend: %s; public key %s", kernel.name, key.public_key())
        await Reconciler(kernel).reconcile(DesiredState(device=device_spec(settings, key)))
        log.info(
            "interface %s is up with %s",
            settings.interface,
            ",".join(map(str, settings.address)),
        )
    finally:
        await kernel.close()


def daemonize(settings: SpokeSettings) -> bool:
    """Double fork; True in the background child, False in the returning parent."""
    if os.fork() > 0:
        return False
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    settings.log_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    setup_logging(settings.log_level)
    log.info("running in the background (pid %d), logging to %s", os.getpid(), settings.log_file)
    return True


def notify(state: str) -> None:
    """sd_notify(3) for Type=notify units; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)


async def serve(settings: SpokeSettings, key: PrivateKey) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kernel = await open_kernel(settings.backend, route_protocol=settings.route_protocol)
    try:
        api = await Api.connect(settings.kubeconfig)
    except BaseException:
        await kernel.close()
        raise
    try:
        await check_api(api, settings.kubeconfig, settings.node_name)
    except BaseException:
        await api.close()
        await kernel.close()
        raise
    # The active hub's tunnel (with several hubs, not necessarily the configured device's).
    metrics = spoke_metrics(
        settings, kernel, lambda: agent.active_hub, lambda: agent.active_interface
    )
    agent = SpokeAgent(
        settings=settings,
        key=key,
        api=api,
        reconciler=Reconciler(kernel, keep_refused=True, observer=metrics.reconcile),
        status=lambda text: notify(f"STATUS={text}"),  # `systemctl status` shows it
        on_active_hub=active_hub_metrics(metrics),
    )
    task = asyncio.create_task(agent.run())
    stopper = asyncio.create_task(stop.wait())
    watchers = observe(settings, metrics, api, lambda: agent.active_hub, stop)
    try:
        await asyncio.wait([task, stopper, *watchers], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
    finally:
        task.cancel()
        stopper.cancel()
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(task, stopper, *watchers, return_exceptions=True)
        await api.close()
        await kernel.close()
        # Stopping must not cut this node off: the interface and the hub peer stay.
        log.info("stopped; interface %s left in place", settings.interface)


def spoke_metrics(
    settings: SpokeSettings,
    kernel: Kernel,
    hub: Callable[[], HubRecord | None],
    interface: Callable[[], str] | None = None,
) -> Metrics:
    def names() -> dict[PublicKey, str]:
        record = hub()
        return {record.public_key: record.node} if record else {}

    book = HealthBook(thresholds(settings.health_handshake_limit, settings.health_keepalive))
    return Metrics(kernel, settings.interface, "spoke", book, names=names, interface_of=interface)


def active_hub_metrics(metrics: Metrics) -> Callable[[str, bool], None]:
    """wgkube_active_hub{hub} and wgkube_hub_failovers_total, kept by the failover hook."""
    active = Gauge(
        "wgkube_active_hub",
        "1 for the hub this spoke's traffic goes through (several hubs), 0 for the others",
        ["hub"],
        registry=metrics.registry,
    )
    failovers = Counter(
        "wgkube_hub_failovers",
        "Times this spoke's traffic moved from one hub to another",
        registry=metrics.registry,
    )
    shown: set[str] = set()

    def update(hub: str, moved: bool) -> None:
        for other in shown - {hub}:
            active.labels(hub=other).set(0)
        active.labels(hub=hub).set(1)
        shown.add(hub)
        if moved:
            failovers.inc()

    return update


def observe(
    settings: SpokeSettings,
    metrics: Metrics,
    api: Api,
    hub: Callable[[], HubRecord | None],
    stop: asyncio.Event,
) -> list[asyncio.Task[None]]:
    """/metrics, and the WireGuardTunnel condition on this Node."""

    def current() -> tuple[str, PublicKey] | None:
        record = hub()
        return (record.node, record.public_key) if record else None

    reporter = SpokeReporter(
        metrics,
        api,
        settings.node_name,
        current,
        interval=settings.health_interval,
        heartbeat=settings.health_heartbeat,
    )
    tasks = [asyncio.create_task(reporter.run(), name="tunnel health")]
    if settings.metrics_address:
        tasks.append(asyncio.create_task(serve_metrics(settings.metrics_address, metrics, stop)))
    return tasks


async def down(settings: SpokeSettings, key: PrivateKey) -> None:
    """Undo the agent: unregister the Node (best effort), then remove the interface."""
    keys = settings.keys
    try:
        async with await Api.connect(settings.kubeconfig) as api:
            await api.patch_node(
                settings.node_name,
                {
                    "metadata": {
                        "labels": {keys.peer: None},
                        "annotations": {
                            keys.public_key: None,
                            keys.allowed_ips: None,
                            keys.active_hub: None,
                        }
                        | ({keys.endpoint: None} if settings.endpoint else {}),
                    }
                },
            )
        log.info("unregistered node %s", settings.node_name)
    except (KubeApiError, KubeconfigError) as exc:
        # Removing the interface must not depend on a working kubeconfig.
        log.warning("cannot unregister node %s: %s", settings.node_name, exc)
    kernel = await open_kernel(settings.backend, route_protocol=settings.route_protocol)
    try:
        await kernel.delete(settings.interface)
        log.info("removed interface %s (key %s kept)", settings.interface, settings.key_path)
        for slot in range(1, MAX_HUBS):  # the devices for further hubs, if any
            ifname = hub_interface_name(settings.interface, slot)
            if (await kernel.observe(ifname)).exists:
                await kernel.delete(ifname)
                log.info("removed interface %s", ifname)
    finally:
        await kernel.close()

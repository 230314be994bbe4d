"""`wg-kube router`: on an ordinary node, route the overlay via the hub; `--down` undoes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from wgkube.config import SettingsError, fail, parse_settings
from wgkube.desired.router import GatewayRoute
from wgkube.diff.gateway import RemoveGatewayRoute
from wgkube.domain.errors import KernelError
from wgkube.kernel.gateway import GatewayTable
from wgkube.kube.client import Api
from wgkube.router.agent import Router, serve_probes
from wgkube.router.settings import RouterSettings

log = logging.getLogger("wgkube.router")

DESCRIPTION = (
    "Run the wg-kube router on an ordinary cluster node (neither hub nor peer): route the "
    "overlay via the hub's InternalIP, following the hub announcement."
)


def run(argv: Sequence[str]) -> int:
    try:
        settings = parse_settings(
            RouterSettings, argv, prog="wg-kube router", description=DESCRIPTION
        )
    except SettingsError as exc:
        return fail("wg-kube router", exc)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, settings.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    try:
        if settings.down:
            asyncio.run(down(settings))
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
    except KernelError as exc:
        log.critical("cannot manage routes: %s", exc)
        return 1
    return 0


def open_table(settings: RouterSettings) -> GatewayTable:
    return GatewayTable(route_protocol=settings.route_protocol, route_table=settings.route_table)


async def serve(settings: RouterSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    table = open_table(settings)
    api = await Api.connect(settings.kubeconfig)
    router = Router(settings=settings, api=api, table=table)
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(router.run(), name="router")]
    if settings.probe_address:
        tasks.append(asyncio.create_task(serve_probes(settings.probe_address, router, stop)))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                task.result()
    finally:
        stop.set()
        for task in (*tasks, stopper):
            task.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)
        await api.close()
        await table.close()
        # Stopping must not cut this node off: a restart adopts the routes unchanged.
        log.info("stopped; routes left in place")


async def down(settings: RouterSettings) -> None:
    """Remove every route of ours (a gateway, our protocol, our table); nothing else."""
    table = open_table(settings)
    try:
        routes: list[GatewayRoute] = sorted(await table.observe(), key=str)
        await table.apply([RemoveGatewayRoute(route) for route in routes])
        log.info("removed %d route(s): %s", len(routes), ", ".join(map(str, routes)) or "none")
    finally:
        await table.close()

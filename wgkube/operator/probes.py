"""Liveness and readiness over HTTP for the DaemonSet's probes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping

from aiohttp import web

from wgkube.operator.loop import HubLoop

log = logging.getLogger("wgkube.hub")


async def serve_probes(
    address: str, hub: HubLoop, stop: asyncio.Event, problems: Mapping[str, str] | None = None
) -> None:
    """/healthz: the process serves; /readyz: listed, the last reconcile succeeded and no
    permission problem (`problems`: what was refused -> what to do) is in force."""
    problems = {} if problems is None else problems
    host, _, port = address.rpartition(":")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready = hub.ready and not problems
        body = {
            "listed": hub.listed.is_set(),
            "ready": ready,
            "problems": sorted(problems.values()),
            "peers": hub.stats.peers,
            "rejected": hub.stats.rejected,
            "reconciles": hub.stats.reconciles,
            "failures": hub.stats.failures,
            "last_success_age": round(time.time() - hub.stats.last_success, 3)
            if hub.stats.last_success
            else None,
        }
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps(body) + "\n",
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "0.0.0.0", int(port))
    await site.start()
    log.info("probes on http://%s/healthz and /readyz", address)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

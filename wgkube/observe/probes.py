"""/healthz and /readyz over HTTP, for the DaemonSets' probes and for people: one server
that renders what its caller's readiness function says and decides nothing itself."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

log = logging.getLogger("wgkube.probes")

Readiness = Callable[[], tuple[bool, Mapping[str, Any]]]
"""Whether the component is ready, and the JSON body that says why."""


async def serve_probes(address: str, readiness: Readiness, stop: asyncio.Event) -> None:
    """/healthz: the process serves; /readyz: 200 or 503 with `readiness()`'s body."""
    host, _, port = address.rpartition(":")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, body = readiness()
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

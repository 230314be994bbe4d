"""`kopf run -m wgkube.operator.dev`: the hub under Kopf's own CLI, for local development.

Settings come from the environment only (NODE_NAME, KUBECONFIG, WG_* as for `wg-kube
hub`). Kopf's CLI owns the event loop, logging and signals; `wg-kube hub` is the
production entry point.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from wgkube.config import parse_settings
from wgkube.operator.hub import Hub
from wgkube.operator.kopf_app import install, own_node_only
from wgkube.operator.settings import HubSettings

_running: dict[str, Hub] = {}
_tasks: set[asyncio.Task[None]] = set()


def _current() -> Hub:
    return _running["hub"]


install(kopf.get_default_registry(), _current, login=False)


@kopf.on.startup()
async def _start(settings: kopf.OperatorSettings, **_: Any) -> None:
    hub_settings = parse_settings(
        HubSettings, [], prog="kopf run -m wgkube.operator.dev", description=""
    )
    hub = await Hub.start(hub_settings)
    _running["hub"] = hub
    own_node_only(settings, hub_settings.node_name)  # as in `wg-kube hub`
    if not await hub.announce_until_done(asyncio.Event()):
        raise kopf.PermanentError("cannot announce the hub")
    _tasks.add(asyncio.create_task(hub.loop.run(), name="reconcile loop"))
    _tasks.add(asyncio.create_task(hub.follow_peers(), name="peer Nodes"))
    _tasks.add(asyncio.create_task(hub.keep_published(), name="announcement"))


@kopf.on.cleanup()
async def _stop(**_: Any) -> None:
    for task in _tasks:
        task.cancel()
    await asyncio.gather(*_tasks, return_exceptions=True)
    if "hub" in _running:
        await _running.pop("hub").close()

"""The hub's readiness, for the DaemonSet's probes (served by wgkube.observe.probes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from wgkube.observe import probes
from wgkube.operator.loop import HubLoop


def hub_readiness(
    hub: HubLoop, problems: Mapping[str, str] | None = None
) -> tuple[bool, dict[str, Any]]:
    """Ready: listed, the last reconcile succeeded and no permission problem (`problems`:
    what was refused -> what to do) is in force."""
    problems = {} if problems is None else problems
    ready = hub.ready and not problems
    return ready, {
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


async def serve_probes(
    address: str, hub: HubLoop, stop: asyncio.Event, problems: Mapping[str, str] | None = None
) -> None:
    await probes.serve_probes(address, lambda: hub_readiness(hub, problems), stop)

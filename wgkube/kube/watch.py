"""List-then-watch of a Node selection that survives timeouts, 410 Gone and outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from wgkube.kube.client import Api, Gone, KubeApiError

log = logging.getLogger("wgkube.kube")

OnList = Callable[[list[dict[str, Any]]], Awaitable[None]]
OnEvent = Callable[[str, dict[str, Any]], Awaitable[None]]


async def follow_nodes(
    api: Api,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    on_list: OnList,
    on_event: OnEvent,
    on_error: Callable[[KubeApiError], Awaitable[None]] | None = None,
    watch_timeout: int = 300,
    max_backoff: float = 30.0,
) -> None:
    """Forever: list (authoritative state to `on_list`), then watch from that version.

    A watch that ends normally resumes from the last version seen; 410 Gone lists
    again; any other failure backs off (0.5 s doubling to `max_backoff`) and lists
    again. Nothing here touches the kernel: a broken API leaves the tunnel alone.
    """
    backoff = 0.5
    while True:
        try:
            items, version = await api.list_nodes(label_selector, field_selector)
            await on_list(items)
            backoff = 0.5
            while True:
                async for kind, obj in api.watch_nodes(
                    label_selector=label_selector,
                    field_selector=field_selector,
                    resource_version=version,
                    timeout_seconds=watch_timeout,
                ):
                    version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        await on_event(kind, obj)
        except Gone:
            log.info("watch of Nodes expired (410); listing again")
        except KubeApiError as exc:
            if on_error is not None:
                await on_error(exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

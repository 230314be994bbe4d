"""List-then-watch of one selection (Nodes, the announcement ConfigMap) that survives
timeouts, 410 Gone, outages and refusals."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from wgkube.kube.client import Api, Forbidden, Gone, KubeApiError

log = logging.getLogger("wgkube.kube")

OnList = Callable[[list[dict[str, Any]]], Awaitable[None]]
OnEvent = Callable[[str, dict[str, Any]], Awaitable[None]]
OnError = Callable[[KubeApiError], Awaitable[None]]
Lister = Callable[[], Awaitable[tuple[list[dict[str, Any]], str]]]
Watcher = Callable[[str, int], AsyncIterator[tuple[str, dict[str, Any]]]]

FORBIDDEN_BACKOFF = 5.0
"""A refusal is a permission problem: asking again at once cannot help, asking slowly
lets a fix (applying the manifests) take effect without a restart."""


async def follow(
    what: str,
    lister: Lister,
    watcher: Watcher,
    *,
    on_list: OnList,
    on_event: OnEvent,
    on_error: OnError | None = None,
    watch_timeout: int = 300,
    max_backoff: float = 30.0,
) -> None:
    """Forever: list (authoritative state to `on_list`), then watch from that version.

    A watch that ends normally resumes from the last version seen; 410 Gone lists
    again; any other failure backs off (0.5 s doubling to `max_backoff`; a 403 starts at
    FORBIDDEN_BACKOFF) and lists again. Nothing here touches the kernel: a broken API
    leaves the tunnel alone.
    """
    backoff = 0.5
    while True:
        try:
            items, version = await lister()
            await on_list(items)
            del items  # not held for as long as the watch runs (10,000 Nodes: tens of MB)
            backoff = 0.5
            while True:
                async for kind, obj in watcher(version, watch_timeout):
                    version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        await on_event(kind, obj)
        except Gone:
            log.info("watch of %s expired (410); listing again", what)
        except KubeApiError as exc:
            if on_error is not None:
                await on_error(exc)
            if isinstance(exc, Forbidden):
                backoff = max(backoff, FORBIDDEN_BACKOFF)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max(max_backoff, FORBIDDEN_BACKOFF))


async def follow_nodes(
    api: Api,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    on_list: OnList,
    on_event: OnEvent,
    on_error: OnError | None = None,
    watch_timeout: int = 300,
    max_backoff: float = 30.0,
) -> None:
    """`follow` over Nodes selected by label and/or field."""

    def watcher(version: str, timeout: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return api.watch_nodes(
            label_selector=label_selector,
            field_selector=field_selector,
            resource_version=version,
            timeout_seconds=timeout,
        )

    await follow(
        "Nodes",
        functools.partial(api.list_nodes, label_selector, field_selector),
        watcher,
        on_list=on_list,
        on_event=on_event,
        on_error=on_error,
        watch_timeout=watch_timeout,
        max_backoff=max_backoff,
    )


async def follow_config_map(
    api: Api,
    namespace: str,
    name: str,
    *,
    on_list: OnList,
    on_event: OnEvent,
    on_error: OnError | None = None,
    watch_timeout: int = 300,
    max_backoff: float = 30.0,
) -> None:
    """`follow` over one ConfigMap by name: the selector lets a Role that names only
    this ConfigMap (resourceNames) allow the list and the watch."""
    selector = f"metadata.name={name}"

    def watcher(version: str, timeout: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return api.watch_config_maps(
            namespace, field_selector=selector, resource_version=version, timeout_seconds=timeout
        )

    await follow(
        f"ConfigMap {namespace}/{name}",
        functools.partial(api.list_config_maps, namespace, selector),
        watcher,
        on_list=on_list,
        on_event=on_event,
        on_error=on_error,
        watch_timeout=watch_timeout,
        max_backoff=max_backoff,
    )

"""The hub's Kopf side: thin handlers that feed the registry, and Kopf's settings.

Only `@kopf.index` and `@kopf.on.event` are used: they store no handler state, add no
finalizers and write nothing onto Nodes. Kopf runs every on.event handler only after
all indices hold the initial listing, so the first call marks the registry complete.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes_asyncio import client

from wgkube.kube.client import KubeApiError
from wgkube.operator.hub import Hub


async def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """Kopf logs in with exactly the credentials our own client uses."""
    header: Any = configuration.get_api_key_with_prefix("BearerToken")
    if inspect.isawaitable(header):
        header = await header
    parts = str(header).split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        default_namespace="default",
    )


def configure(settings: kopf.OperatorSettings) -> None:
    settings.peering.standalone = True
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.watching.reconnect_backoff = 0.5
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


def install(
    registry: kopf.OperatorRegistry, current: Callable[[], Hub], *, login: bool = True
) -> None:
    """Register the handlers; `current()` returns the running Hub (set before watching).

    Without `login`, Kopf's own login handlers apply (`kopf run` reads $KUBECONFIG).
    """

    @kopf.on.startup(registry=registry)
    def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)

    if login:

        @kopf.on.login(registry=registry)
        async def _login(**_: Any) -> kopf.ConnectionInfo:
            return await connection_info(current().configuration)

    @kopf.index("nodes", registry=registry)
    def _peer_nodes(body: kopf.Body, **_: Any) -> None:
        hub = current()
        if hub.peers.observe(body):
            hub.loop.wake()

    @kopf.on.event("nodes", registry=registry)
    async def _node_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        hub = current()
        if event.get("type") == "DELETED" and hub.peers.observe(body, deleted=True):
            hub.loop.wake()
        if not hub.loop.listed.is_set():
            hub.loop.listed.set()
            hub.loop.wake()
        own = body.get("metadata", {}).get("name") == hub.settings.node_name
        if own and event.get("type") != "DELETED" and not hub.announced(body):
            try:
                await hub.announce(body)
            except KubeApiError as exc:  # the next change or restart tries again
                logging.getLogger("wgkube.hub").warning("re-announcing the hub failed: %s", exc)

"""The hub's Kopf side: its login, its settings, and the hub's own Node.

Kopf follows the hub's own Node (a server-side field selector on its name): its
ExternalIP gives the published endpoint, and its label and annotations are put back
when someone removes them. Only `@kopf.on.event` is used: it stores no handler state,
adds no finalizers and writes nothing onto Nodes.

The peer Nodes (10,000 in a large cluster) are followed by the hub itself
(Hub.follow_peers): one paginated list that is also the registry's first authoritative
one, then a watch from its version. Kopf would list them a second time, whole, and run
a worker per Node; measured in the README's Performance section.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import kopf

from wgkube.kube.client import Configuration, KubeApiError
from wgkube.operator.hub import Hub


async def connection_info(configuration: Configuration) -> kopf.ConnectionInfo:
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
    # Kopf's initial list in pages: 10,000 kubelet-sized Nodes at once are ~40 MB of JSON
    # and several times that parsed, the hub's peak memory.
    settings.watching.chunk_size = 500
    settings.networking.request_timeout = 30


def own_node_only(settings: kopf.OperatorSettings, node: str) -> None:
    """Kopf lists and watches the hub's own Node only (Kopf starts watching after every
    startup handler has returned, so a selector set in one applies)."""
    settings.watching.field_selectors["nodes"] = f"metadata.name={node}"


def install(
    registry: kopf.OperatorRegistry, current: Callable[[], Hub], *, login: bool = True
) -> None:
    """Register the handlers; `current()` returns the running Hub (set before watching).

    Without `login`, Kopf's own login handlers apply (`kopf run` reads $KUBECONFIG).
    """

    @kopf.on.startup(registry=registry)
    def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        try:
            hub = current()
        except KeyError:  # `kopf run` (dev): the hub starts later and sets the selector
            return
        own_node_only(settings, hub.settings.node_name)

    if login:

        @kopf.on.login(registry=registry)
        async def _login(**_: Any) -> kopf.ConnectionInfo:
            return await connection_info(current().configuration)

    @kopf.on.event("nodes", registry=registry)
    async def _node_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        # async: Kopf runs sync handlers in a thread pool.
        hub = current()
        if body.get("metadata", {}).get("name") != hub.settings.node_name:
            return  # the field selector sends no other; `kopf run` without it might
        if event.get("type") == "DELETED":
            return  # a Node registered again arrives as ADDED and is announced then
        hub.saw_own_node(body)  # a moved InternalIP republishes the announcement
        if not hub.announced(body):
            try:
                await hub.announce(body)
            except KubeApiError as exc:  # the next change or restart tries again
                logging.getLogger("wgkube.hub").warning("re-announcing the hub failed: %s", exc)

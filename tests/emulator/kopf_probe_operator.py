"""A tiny Kopf operator run by test_kopf.py as a `kopf run` subprocess (not a test module)."""

from __future__ import annotations

from typing import Any

import kopf

PEER = "wireguard.kube/peer"


@kopf.on.login()
def login(**kwargs: Any) -> Any:
    # Explicitly from $KUBECONFIG (set by the test): never from in-cluster or other sources.
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.watching.server_timeout = 10
    settings.watching.client_timeout = 15
    settings.watching.connect_timeout = 5
    settings.watching.reconnect_backoff = 0.1
    settings.networking.request_timeout = 10
    settings.networking.error_backoffs = [0.1, 0.2, 0.3, 0.5]
    # Handler filters are applied by Kopf itself; this makes the API server filter too.
    settings.watching.label_selectors["nodes"] = f"{PEER}=true"


@kopf.index("nodes", labels={PEER: "true"})
def peers(name: str, **_: Any) -> dict[str, bool]:
    return {name: True}


@kopf.on.event("nodes", labels={PEER: "true"})
def peer_event(*, event: kopf.RawEvent, name: str, body: kopf.Body, **kwargs: Any) -> None:
    peers: kopf.Index[str, bool] = kwargs["peers"]  # the index above, injected by name
    note = body.get("metadata", {}).get("annotations", {}).get("note", "-")
    kopf.warn(
        body,
        reason="PeerSeen",
        message=f"{event['type']} {name} note={note} peers={','.join(sorted(peers))}",
    )

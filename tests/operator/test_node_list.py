"""The hub's Node list on a real kube-apiserver: peers only, in pages, what the registry
reads kept, and as one snapshot whose resourceVersion a watch can start from."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.controlplane import require_control_plane
from wgkube.domain.annotations import Keys
from wgkube.kube.client import Api
from wgkube.operator import hub
from wgkube.operator.registry import PeerRegistry
from wgkube.testing.controlplane import ControlPlane

PEER = "wireguard.kube/peer"


def node(name: str, *, peer: bool) -> dict[str, object]:
    labels = {PEER: "true"} if peer else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.9"}],
            "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 1}],
        },
    }


async def test_the_hubs_paged_list_takes_every_peer_once_with_only_the_fields_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """list_peers, as the hub's follower and resyncs run it: page by page into the
    registry (LIST_PAGE made 2 here), each Node reduced to what the registry reads."""
    require_control_plane()
    monkeypatch.setattr(hub, "LIST_PAGE", 2)
    with ControlPlane() as plane:
        api = await Api.connect(plane.kubeconfig)
        async with api:
            for i in range(7):
                await api._json(api._core.create_node, node(f"peer-{i}", peer=True))
            await api._json(api._core.create_node, node("other", peer=False))
            pages: list[object] = []
            kept: list[dict[str, Any]] = []
            real = api._json

            async def counting(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
                pages.append(kwargs.get("_continue"))
                return await real(call, *args, **kwargs)

            reduce = hub.peer_fields

            def keeping(body: dict[str, Any]) -> dict[str, Any]:
                kept.append(reduce(body))
                return kept[-1]

            api._json = counting  # type: ignore[method-assign]
            monkeypatch.setattr(hub, "peer_fields", keeping)
            registry = PeerRegistry(Keys(), "hub")
            version = await hub.list_peers(api, registry, hub.Problems())
            api._json = real  # type: ignore[method-assign]
    assert len(pages) == 4  # 2 + 2 + 2 + 1, each after the first with a continue token
    assert pages[0] is None
    assert all(pages[1:])
    assert len(registry) == 7
    assert sorted(registry.ref(f"peer-{i}").name for i in range(7)) == [
        f"peer-{i}" for i in range(7)
    ]
    assert registry.ref("other").uid == "", "not a peer: never listed"
    assert version.isdigit()
    assert len(kept) == 7
    assert set(kept[0]) == {"metadata", "status"}
    assert kept[0]["status"] == {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]}
    assert "managedFields" not in kept[0]["metadata"]
    assert kept[0]["metadata"]["labels"] == {PEER: "true"}

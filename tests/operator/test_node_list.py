"""The hub's Node list on a real kube-apiserver: peers only, in pages, what the registry
reads kept, and as one snapshot whose resourceVersion a watch can start from."""

from __future__ import annotations

from typing import Any

from tests.support.controlplane import require_control_plane
from wgkube.kube.client import Api
from wgkube.operator.hub import peer_fields
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


async def test_a_paged_list_returns_every_peer_once_with_only_the_fields_kept() -> None:
    require_control_plane()
    with ControlPlane() as plane:
        api = await Api.connect(plane.kubeconfig)
        async with api:
            for i in range(7):
                await api._json(api._core.create_node, node(f"peer-{i}", peer=True))
            await api._json(api._core.create_node, node("other", peer=False))
            pages: list[object] = []
            real = api._json

            async def counting(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
                pages.append(kwargs.get("_continue"))
                return await real(call, *args, **kwargs)

            api._json = counting  # type: ignore[method-assign]
            items, version = await api.list_nodes(f"{PEER}=true", page=2, keep=peer_fields)
            api._json = real  # type: ignore[method-assign]
            whole, _ = await api.list_nodes(f"{PEER}=true")
    assert len(pages) == 4  # 2 + 2 + 2 + 1, each after the first with a continue token
    assert pages[0] is None
    assert all(pages[1:])
    names = [i["metadata"]["name"] for i in items]
    assert sorted(names) == [f"peer-{i}" for i in range(7)]
    assert sorted(names) == sorted(i["metadata"]["name"] for i in whole)
    assert version.isdigit()
    kept = items[0]
    assert set(kept) == {"metadata", "status"}
    assert kept["status"] == {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]}
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["labels"] == {PEER: "true"}

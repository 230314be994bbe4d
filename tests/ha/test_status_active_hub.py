"""`wg-kube status` names the hub each spoke sends through when there are several."""

from __future__ import annotations

from typing import Any

from wgkube.domain.annotations import Keys
from wgkube.observe.status import overlay


def node(name: str, role: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {f"wireguard.kube/{role}": "true"},
            "annotations": annotations,
        },
        "status": {},
    }


def test_a_spoke_noting_its_active_hub_shows_it_and_one_without_shows_nothing() -> None:
    nodes = [
        node("hub-a", "hub", {}),
        node("hub-b", "hub", {}),
        node("spoke-1", "peer", {"wireguard.kube/active-hub": "hub-b"}),
        node("spoke-2", "peer", {}),
    ]
    rows = {r["node"]: r for r in overlay(nodes, [], Keys())}
    assert rows["spoke-1"]["detail"] == "via hub hub-b"
    assert rows["spoke-2"]["detail"] == ""

"""What the hub announces for `wg-kube router`: its InternalIP (republished when it moves,
long before the periodic re-assertion) and the prefixes ordinary nodes route via it."""

from __future__ import annotations

import ipaddress

from tests.operator.conftest import HUB, HubHarness
from wgkube.domain.annotations import HubRecord
from wgkube.domain.announcement import NAME, NAMESPACE, decode
from wgkube.testing.apiserver import wait_for


def announced(hub: HubHarness) -> HubRecord | None:
    config_map = hub.api.get("configmaps", NAME, namespace=NAMESPACE)
    if config_map is None:
        return None
    (record,) = decode(config_map.get("data"))
    return record


def test_the_hub_announces_its_internal_ip_and_router_prefixes_and_follows_a_move(
    hub: HubHarness,
) -> None:
    hub.start("--router-prefixes", "100.96.0.0/24,10.244.128.0/17")
    first = wait_for(lambda: announced(hub), message="the announcement")
    assert first.internal_ip == ipaddress.ip_address("10.0.0.1")
    assert [str(n) for n in first.router_prefixes or ()] == ["10.244.128.0/17", "100.96.0.0/24"]
    addresses = [
        {"type": "InternalIP", "address": "10.0.0.7"},
        {"type": "ExternalIP", "address": "203.0.113.1"},
    ]
    hub.api.patch_node(HUB, {"status": {"addresses": addresses}}, status=True)
    # The re-assertion runs every 60 s; the hub's own Node event republishes at once.
    moved = wait_for(
        lambda: r if (r := announced(hub)) and str(r.internal_ip) == "10.0.0.7" else None,
        timeout=15,
        message="the announcement follows the new InternalIP",
    )
    assert moved.endpoint == first.endpoint
    assert moved.router_prefixes == first.router_prefixes


def test_without_router_prefixes_none_are_announced(hub: HubHarness) -> None:
    hub.start()
    record = wait_for(lambda: announced(hub), message="the announcement")
    assert record.router_prefixes is None
    assert record.internal_ip == ipaddress.ip_address("10.0.0.1")

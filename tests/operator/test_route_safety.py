"""The hub process refuses claims on what it needs outside the tunnel (memory kernel)."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.operator.conftest import HubHarness, new_key
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint
from wgkube.kernel.memory import MemoryKernel


def test_claims_on_the_api_server_or_an_endpoint_are_refused_and_the_rest_go_in(
    hub: HubHarness,
) -> None:
    api_host = urlsplit(hub.api.url).hostname
    good, roamer = new_key(), new_key()
    hub.create_peer("good", good, "100.96.0.2/32", endpoint="198.51.100.2:51820")
    hub.create_peer("roamer", roamer, "100.96.0.3/32")
    proc = hub.start("--resync-interval", "0.3")
    hub.wait_peers({good, roamer})
    # WireGuard learns where the roamer is; the next resync protects that address too.
    MemoryKernel(hub.device.path).learn_endpoint(
        "wg0", PublicKey.parse(roamer), Endpoint.parse("192.0.2.77:4500")
    )
    hub.wait_reconciles(3)
    hub.create_peer("claims-api", new_key(), f"{api_host}/32")
    hub.create_peer("claims-endpoint", new_key(), "198.51.100.0/24")
    hub.create_peer("claims-learned", new_key(), "192.0.2.64/26")
    # Here the API server listens on loopback, which the codec refuses on any peer before
    # route safety is asked; the API-server rule on a routable address is exercised by
    # tests/system/test_route_hijack.py (the lab's API server is on its bridge).
    invalid = hub.wait_event("claims-api", "InvalidPeerConfig")
    assert "loopback" in invalid["message"], invalid["message"]
    for node, words in [
        ("claims-endpoint", "covers the endpoint 198.51.100.2 of node 'good'"),
        ("claims-learned", "covers the endpoint 192.0.2.77 learned from node 'roamer'"),
    ]:
        event = hub.wait_event(node, "PeerConflict")
        assert words in event["message"], event["message"]
        assert f"peer {node} skipped (PeerConflict)" in proc.log
    assert set(hub.device.peers()) == {good, roamer}


def test_peer_cidrs_confine_claims_to_the_pool(hub: HubHarness) -> None:
    inside, outside = new_key(), new_key()
    hub.create_peer("inside", inside, "100.96.0.2/32,10.244.3.0/24")
    hub.create_peer("outside", outside, "100.96.0.3/32,10.9.0.0/24")
    hub.start("--peer-cidrs", "100.96.0.0/24,10.244.0.0/16")
    event = hub.wait_event("outside", "PeerConflict")
    assert event["message"] == (
        "allowed-ips 10.9.0.0/24 is outside --peer-cidrs 10.244.0.0/16,100.96.0.0/24"
    )
    assert set(hub.wait_peers({inside})) == {inside}

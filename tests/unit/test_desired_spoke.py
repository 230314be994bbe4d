"""The spoke's desired state: its device and one peer, the hub."""

from __future__ import annotations

import pytest

from tests.unit.builders import ep, iface, nets, priv, pub
from wgkube.desired.model import DeviceSpec, PeerSpec
from wgkube.desired.spoke import spoke_state
from wgkube.domain.annotations import HubRecord

DEVICE = DeviceSpec(
    name="wg0", private_key=priv("spoke"), listen_port=51820, addresses=(iface("100.96.0.2/32"),)
)
HUB = HubRecord(
    node="hub",
    public_key=pub("hub"),
    endpoint=ep("203.0.113.1:51820"),
    allowed_ips=nets("100.96.0.1/32", "10.0.0.0/16"),
)


def test_with_no_hub_known_only_the_device_is_managed_and_peers_are_left_alone() -> None:
    state = spoke_state(DEVICE, None)
    assert state.device == DEVICE
    assert state.peers is None
    assert state.routes == frozenset()


def test_the_hub_becomes_the_one_peer_with_a_keepalive_and_its_routes() -> None:
    state = spoke_state(DEVICE, HUB)
    assert state.device == DEVICE
    assert state.peers == {
        pub("hub"): PeerSpec(
            public_key=pub("hub"),
            endpoint=ep("203.0.113.1:51820"),
            allowed_ips=nets("10.0.0.0/16", "100.96.0.1/32"),
            persistent_keepalive=25,
        )
    }
    assert state.routes == frozenset(nets("10.0.0.0/16", "100.96.0.1/32"))


@pytest.mark.parametrize("keepalive", [0, 10, 65535])
def test_the_keepalive_can_be_chosen(keepalive: int) -> None:
    state = spoke_state(DEVICE, HUB, persistent_keepalive=keepalive)
    assert state.peers is not None
    assert state.peers[pub("hub")].persistent_keepalive == keepalive


def test_hub_allowed_ips_overrides_the_hubs_annotation() -> None:
    override = nets("fd00::/64", "10.0.0.0/8", "10.0.0.0/8")
    state = spoke_state(DEVICE, HUB, hub_allowed_ips=override)
    assert state.peers is not None
    assert state.peers[pub("hub")].allowed_ips == nets("10.0.0.0/8", "fd00::/64")
    assert state.routes == frozenset(nets("10.0.0.0/8", "fd00::/64"))


def test_an_empty_override_falls_back_to_the_hubs_annotation() -> None:
    state = spoke_state(DEVICE, HUB, hub_allowed_ips=())
    assert state.peers is not None
    assert state.peers[pub("hub")].allowed_ips == nets("10.0.0.0/16", "100.96.0.1/32")


def test_a_default_route_through_the_hub_is_allowed_but_never_routed() -> None:
    state = spoke_state(DEVICE, HUB, hub_allowed_ips=nets("0.0.0.0/0", "::/0", "10.0.0.0/16"))
    assert state.peers is not None
    assert state.peers[pub("hub")].allowed_ips == nets("0.0.0.0/0", "10.0.0.0/16", "::/0")
    assert state.routes == frozenset(nets("10.0.0.0/16"))


def test_a_hub_without_an_endpoint_gives_a_peer_that_keeps_a_learned_endpoint() -> None:
    hub = HUB.model_copy(update={"endpoint": None})
    state = spoke_state(DEVICE, hub)
    assert state.peers is not None
    assert state.peers[pub("hub")].endpoint is None

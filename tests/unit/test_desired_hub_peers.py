"""Several hubs: each hub peers with the others on their own addresses (pure)."""

from __future__ import annotations

import pytest

from tests.unit.builders import ep, iface, nets, priv, pub, record
from wgkube.desired.hub import hub_state
from wgkube.desired.model import CONFLICT, DeviceSpec, PeerSpec
from wgkube.domain.annotations import HubRecord

HUB = DeviceSpec(
    name="wg0", private_key=priv("hub-a"), listen_port=51820, addresses=(iface("100.96.0.1/32"),)
)
OWN = HubRecord(
    node="hub-a",
    public_key=priv("hub-a").public_key(),
    endpoint=ep("198.18.0.1:51820"),
    allowed_ips=nets("100.96.0.0/24"),
    addresses=nets("100.96.0.1/32"),
)


def other(name: str, address: str, endpoint: str = "198.18.0.2:51820") -> HubRecord:
    return HubRecord(
        node=name,
        public_key=pub(name),
        endpoint=ep(endpoint),
        allowed_ips=nets("100.96.0.0/24"),
        addresses=nets(address) if address else (),
    )


def test_the_other_hubs_become_peers_on_their_own_addresses_and_get_routes() -> None:
    b = other("hub-b", "100.96.0.253/32")
    state, rejections = hub_state(
        HUB, [record("spoke", "s", "100.96.0.11/32")], hubs=[OWN, b], persistent_keepalive=5
    )
    assert rejections == []
    assert state.peers is not None
    assert state.peers[b.public_key] == PeerSpec(
        public_key=b.public_key,
        endpoint=ep("198.18.0.2:51820"),
        allowed_ips=nets("100.96.0.253/32"),
        persistent_keepalive=5,
    )
    assert OWN.public_key not in state.peers
    assert state.routes == set(nets("100.96.0.253/32", "100.96.0.11/32"))


def test_a_spoke_claiming_a_hubs_address_conflicts_with_that_hub() -> None:
    b = other("hub-b", "100.96.0.253/32")
    _, rejections = hub_state(
        HUB, [record("greedy", "g", "100.96.0.253/32", created=-99)], hubs=[b]
    )
    assert [(r.node, r.reason) for r in rejections] == [("greedy", CONFLICT)]
    assert "node 'hub-b'" in rejections[0].message


@pytest.mark.parametrize(
    "hub",
    [other("hub-b", ""), other("hub-b", "100.96.0.1/32"), other("hub-b", "100.96.0.0/24")],
    ids=["no-addresses", "this-hubs-address", "over-this-hubs-address"],
)
def test_a_hub_entry_that_would_take_this_hubs_address_or_has_none_is_left_out(
    hub: HubRecord,
) -> None:
    state, rejections = hub_state(HUB, [], hubs=[hub])
    assert state.peers == {}
    assert rejections == []


def test_without_announced_hubs_the_state_is_what_it_was() -> None:
    records = [record("spoke", "s", "100.96.0.11/32")]
    assert hub_state(HUB, records) == hub_state(HUB, records, hubs=[OWN])

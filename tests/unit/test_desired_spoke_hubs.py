"""A spoke's desired state with several hubs: one device per hub, routes on the active one."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from tests.unit.builders import ep, iface, nets, priv, pub
from wgkube.desired.model import DeviceSpec
from wgkube.desired.spoke import (
    MAX_HUBS,
    host_addresses,
    hub_interface_name,
    hub_slots,
    spoke_ha_states,
)
from wgkube.domain.annotations import HubRecord
from wgkube.domain.keys import PublicKey

DEVICE = DeviceSpec(
    name="wg0", private_key=priv("spoke"), listen_port=51820, addresses=(iface("100.96.0.2/24"),)
)


def hub(
    name: str, endpoint: str = "203.0.113.1:51820", allowed: str = "100.96.0.0/24"
) -> HubRecord:
    return HubRecord(
        node=name, public_key=pub(name), endpoint=ep(endpoint), allowed_ips=nets(allowed)
    )


A, B, C = hub("a"), hub("b", "203.0.113.2:51820"), hub("c", "203.0.113.3:51820")


@pytest.mark.parametrize(
    ("base", "slot", "name"),
    [
        ("wg0", 0, "wg0"),
        ("wg0", 1, "wg0-1"),
        ("wg-spoke-1", 7, "wg-spoke-1-7"),
        ("a-fifteen-chars", 2, "a-fifteen-cha-2"),
    ],
)
def test_slot_zero_is_the_configured_interface_and_the_others_fit_fifteen_characters(
    base: str, slot: int, name: str
) -> None:
    assert hub_interface_name(base, slot) == name
    assert len(name) <= 15


@pytest.mark.parametrize(
    ("hubs", "holding", "expected"),
    [
        ([A], {}, {"a": 0}),
        ([A, B], {}, {"a": 0, "b": 1}),
        # a hub keeps the device that holds its key; a new one takes the lowest free slot
        ([A, B], {"wg0": pub("b")}, {"b": 0, "a": 1}),
        ([C, A, B], {"wg0": pub("a"), "wg0-1": pub("b")}, {"a": 0, "b": 1, "c": 2}),
        ([A, C], {"wg0": pub("a"), "wg0-1": pub("b"), "wg0-2": pub("c")}, {"a": 0, "c": 2}),
        ([A], {"wg0-1": pub("a")}, {"a": 1}),
    ],
    ids=["one", "two", "kept", "joined", "left", "one-on-a-later-slot"],
)
def test_hubs_keep_their_devices_when_another_joins_or_leaves(
    hubs: list[HubRecord], holding: Mapping[str, PublicKey], expected: dict[str, int]
) -> None:
    assert hub_slots("wg0", hubs, holding) == expected


def test_at_most_max_hubs_get_a_device_the_preferred_first() -> None:
    many = [hub(f"h{i}") for i in range(MAX_HUBS + 2)]
    slots = hub_slots("wg0", many, {})
    assert list(slots) == [f"h{i}" for i in range(MAX_HUBS)]


def test_every_hub_gets_a_device_with_the_whole_range_and_only_the_active_one_routes() -> None:
    states = spoke_ha_states(DEVICE, [A, B], {"a": 0, "b": 1}, "b")
    assert set(states) == {"wg0", "wg0-1"}
    for ifname, peer_hub in (("wg0", A), ("wg0-1", B)):
        state = states[ifname]
        assert state.device.addresses == (iface("100.96.0.2/32"),)
        assert state.device.private_key == DEVICE.private_key
        assert state.peers is not None
        (peer,) = state.peers.values()
        assert peer.public_key == peer_hub.public_key
        assert peer.allowed_ips == nets("100.96.0.0/24")
    assert states["wg0"].routes == frozenset()
    assert states["wg0-1"].routes == frozenset(nets("100.96.0.0/24"))
    assert states["wg0"].device.listen_port == 51820
    assert states["wg0-1"].device.listen_port == 51821


def test_no_active_hub_means_no_routes_anywhere() -> None:
    states = spoke_ha_states(DEVICE, [A, B], {"a": 0, "b": 1}, None)
    assert all(not s.routes for s in states.values())


def test_a_route_that_would_carry_another_hubs_tunnel_is_left_out() -> None:
    wide = hub("a", "198.51.100.1:51820", allowed="203.0.113.0/24")
    inside = hub("b", "203.0.113.2:51820")
    outside = hub("c", "198.51.100.9:51820")
    assert spoke_ha_states(DEVICE, [wide, inside], {"a": 0, "b": 1}, "a")["wg0"].routes == set()
    routes = spoke_ha_states(DEVICE, [wide, outside], {"a": 0, "c": 1}, "a")["wg0"].routes
    assert routes == set(nets("203.0.113.0/24"))


def test_addresses_become_host_addresses_on_every_hubs_device() -> None:
    assert host_addresses((iface("100.96.0.2/24"), iface("fd00::2/64"))) == (
        iface("100.96.0.2/32"),
        iface("fd00::2/128"),
    )

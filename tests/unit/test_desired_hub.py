"""The hub's desired state from its peer registry, and the conflict rule."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from datetime import datetime

import pytest

from tests.unit.builders import at, ep, iface, net, nets, priv, pub, record
from wgkube.desired.hub import hub_state, is_default_route, seniority
from wgkube.desired.model import CONFLICT, DeviceSpec, PeerSpec, Rejection
from wgkube.domain.annotations import PeerRecord
from wgkube.domain.net import IPNetwork, normalize_networks

HUB = DeviceSpec(
    name="wg0",
    private_key=priv("hub"),
    listen_port=51820,
    addresses=(iface("100.96.0.1/24"), iface("fd96::1/64")),
)


def accepted(records: Sequence[PeerRecord], device: DeviceSpec = HUB) -> set[str]:
    state, _ = hub_state(device, records)
    assert state.peers is not None
    # Several records may share a key: the accepted one is the one whose data made the spec.
    return {
        r.node
        for r in records
        if (spec := state.peers.get(r.public_key)) is not None
        and spec.allowed_ips == normalize_networks(r.allowed_ips)
    }


def rejected(records: Sequence[PeerRecord], device: DeviceSpec = HUB) -> dict[str, Rejection]:
    _, rejections = hub_state(device, records)
    return {r.node: r for r in rejections}


# -- accepting -------------------------------------------------------------------------------


def test_valid_peers_become_peer_specs_and_routes() -> None:
    records = [
        record("a", 1, "10.0.1.0/24", "fd00:1::/64", endpoint="203.0.113.1:51820"),
        record("b", 2, "10.0.2.0/24"),
        record("c", 3, "100.96.0.3/32"),
    ]
    state, rejections = hub_state(HUB, records, persistent_keepalive=25)
    assert rejections == []
    assert state.device == HUB
    assert state.peers == {
        pub(1): PeerSpec(pub(1), ep("203.0.113.1:51820"), nets("10.0.1.0/24", "fd00:1::/64"), 25),
        pub(2): PeerSpec(pub(2), None, nets("10.0.2.0/24"), 25),
        pub(3): PeerSpec(pub(3), None, nets("100.96.0.3/32"), 25),
    }
    assert state.routes == frozenset(
        nets("10.0.1.0/24", "fd00:1::/64", "10.0.2.0/24", "100.96.0.3/32")
    )


def test_a_peer_inside_the_hubs_subnet_but_not_on_its_address_is_accepted() -> None:
    state, rejections = hub_state(HUB, [record("a", 1, "100.96.0.2/32", "fd96::2/128")])
    assert rejections == []
    assert state.routes == frozenset(nets("100.96.0.2/32", "fd96::2/128"))


def test_no_peers_gives_an_empty_peer_set_not_none() -> None:
    state, rejections = hub_state(HUB, [])
    assert (state.peers, state.routes, rejections) == ({}, frozenset(), [])


def test_keepalive_defaults_to_off() -> None:
    state, _ = hub_state(HUB, [record("a", 1, "10.0.1.0/24")])
    assert state.peers is not None
    assert state.peers[pub(1)].persistent_keepalive == 0


def test_a_peers_own_overlapping_prefixes_do_not_conflict_with_each_other() -> None:
    state, rejections = hub_state(HUB, [record("a", 1, "10.0.0.0/16", "10.0.1.0/24")])
    assert rejections == []
    assert state.peers is not None
    assert state.peers[pub(1)].allowed_ips == nets("10.0.0.0/16", "10.0.1.0/24")


# -- seniority -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "older"),
    [
        pytest.param(("zed", at(0)), ("abe", at(5)), "zed", id="older-timestamp-beats-name"),
        pytest.param(("abe", at(5)), ("zed", at(0)), "zed", id="older-timestamp-listed-second"),
        pytest.param(("abe", at(3)), ("zed", at(3)), "abe", id="same-time-name-sorts-first"),
        pytest.param(("zed", at(3)), ("abe", at(3)), "abe", id="same-time-name-listed-second"),
        pytest.param(
            ("zed", datetime(2024, 1, 1)), ("abe", at(1)), "zed", id="naive-counts-as-utc"
        ),
    ],
)
def test_seniority_puts_the_older_node_first_then_the_name(
    a: tuple[str, datetime], b: tuple[str, datetime], older: str
) -> None:
    first = record(a[0], 1, "10.0.0.0/24", created=a[1])
    second = record(b[0], 2, "10.0.1.0/24", created=b[1])
    assert min([first, second], key=seniority).node == older


# -- conflicts: public keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_created", "b_created", "winner", "loser"),
    [
        pytest.param(0, 10, "a", "b", id="a-older"),
        pytest.param(10, 0, "b", "a", id="b-older"),
        pytest.param(7, 7, "a", "b", id="same-age-name-decides"),
    ],
)
@pytest.mark.parametrize("reverse", [False, True], ids=["listed-a-b", "listed-b-a"])
def test_a_duplicate_public_key_stays_with_the_older_node(
    a_created: int, b_created: int, winner: str, loser: str, reverse: bool
) -> None:
    records = [
        record("a", 1, "10.0.1.0/24", created=a_created),
        record("b", 1, "10.0.2.0/24", created=b_created),
    ]
    if reverse:
        records.reverse()
    state, rejections = hub_state(HUB, records)
    assert state.peers is not None
    winning = next(r for r in records if r.node == winner)
    assert state.peers[pub(1)].allowed_ips == winning.allowed_ips
    assert state.routes == frozenset(winning.allowed_ips)
    assert len(rejections) == 1
    assert rejections[0].node == loser
    assert rejections[0].reason == CONFLICT
    assert f"node {winner!r}" in rejections[0].message
    assert "public-key" in rejections[0].message


def test_a_peer_using_the_hubs_own_public_key_is_rejected() -> None:
    own = HUB.private_key.public_key()
    state, rejections = hub_state(HUB, [record("evil", own, "10.0.9.0/24", created=-100)])
    assert state.peers == {}
    assert state.routes == frozenset()
    assert [(r.node, r.reason) for r in rejections] == [("evil", CONFLICT)]
    assert "hub's own public key" in rejections[0].message


# -- conflicts: addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
    "allowed",
    [
        pytest.param(("100.96.0.1/32",), id="hub-address-exactly"),
        pytest.param(("100.96.0.0/24",), id="hub-subnet"),
        pytest.param(("100.0.0.0/8",), id="supernet"),
        pytest.param(("10.0.5.0/24", "100.96.0.0/30"), id="one-of-several"),
        pytest.param(("fd96::/64",), id="hub-v6-subnet"),
        pytest.param(("fd96::1/128",), id="hub-v6-address"),
    ],
)
def test_allowed_ips_over_the_hubs_own_address_are_a_conflict(allowed: tuple[str, ...]) -> None:
    state, rejections = hub_state(HUB, [record("a", 1, *allowed, created=-100)])
    assert state.peers == {}
    assert state.routes == frozenset()
    assert [(r.node, r.reason) for r in rejections] == [("a", CONFLICT)]
    assert "the hub's own address" in rejections[0].message


@pytest.mark.parametrize(
    ("older", "younger"),
    [
        pytest.param(("10.0.0.0/16",), ("10.0.1.0/24",), id="younger-inside-older"),
        pytest.param(("10.0.1.0/24",), ("10.0.0.0/16",), id="older-inside-younger"),
        pytest.param(("10.0.1.0/24",), ("10.0.1.0/24",), id="equal"),
        pytest.param(("10.0.1.7/32",), ("10.0.1.7/32",), id="equal-host"),
        pytest.param(("fd00::/48",), ("fd00:0:0:1::/64",), id="v6-nested"),
        pytest.param(("10.0.1.0/24",), ("10.9.0.0/16", "10.0.1.128/25"), id="one-of-several"),
        pytest.param(("10.9.0.0/16", "10.0.1.0/24"), ("10.0.0.0/8",), id="covers-several"),
    ],
)
def test_a_younger_peer_overlapping_an_older_one_is_rejected_whole(
    older: tuple[str, ...], younger: tuple[str, ...]
) -> None:
    records = [record("young", 2, *younger, created=5), record("old", 1, *older, created=0)]
    state, rejections = hub_state(HUB, records)
    assert state.peers is not None
    assert set(state.peers) == {pub(1)}
    assert state.routes == frozenset(nets(*older))
    assert len(rejections) == 1
    assert (rejections[0].node, rejections[0].reason) == ("young", CONFLICT)
    assert "node 'old'" in rejections[0].message
    assert "overlaps" in rejections[0].message


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param("10.0.0.0/25", "10.0.0.128/25", id="adjacent-halves"),
        pytest.param("10.0.0.0/24", "10.0.1.0/24", id="neighbours"),
        pytest.param("10.0.0.1/32", "10.0.0.2/32", id="hosts"),
        pytest.param("::ffff:10.0.0.0/104", "10.0.0.0/8", id="v4-mapped-v6-vs-v4"),
    ],
)
def test_peers_whose_prefixes_only_touch_are_both_accepted(a: str, b: str) -> None:
    records = [record("a", 1, a), record("b", 2, b)]
    assert accepted(records) == {"a", "b"}
    assert rejected(records) == {}


def test_in_a_chain_of_overlaps_the_oldest_wins_and_the_middle_loses() -> None:
    # A overlaps B, B overlaps C, A does not overlap C.
    a = record("a", 1, "10.0.0.0/24", created=0)
    b = record("b", 2, "10.0.0.0/23", created=1)
    c = record("c", 3, "10.0.1.0/24", created=2)
    for records in ([a, b, c], [c, b, a], [b, c, a]):
        assert accepted(records) == {"a", "c"}
        assert set(rejected(records)) == {"b"}
        assert "node 'a'" in rejected(records)["b"].message


def test_in_a_chain_of_overlaps_an_oldest_middle_wins_over_both_ends() -> None:
    a = record("a", 1, "10.0.0.0/24", created=1)
    b = record("b", 2, "10.0.0.0/23", created=0)
    c = record("c", 3, "10.0.1.0/24", created=2)
    assert accepted([a, b, c]) == {"b"}
    assert set(rejected([a, b, c])) == {"a", "c"}


def test_a_rejected_peer_does_not_keep_its_other_prefixes() -> None:
    a = record("a", 1, "10.0.0.0/16", created=0)
    b = record("b", 2, "10.0.5.0/24", "10.7.0.0/16", created=1)
    c = record("c", 3, "10.7.0.0/16", created=2)
    state, _ = hub_state(HUB, [a, b, c])
    assert accepted([a, b, c]) == {"a", "c"}
    assert state.routes == frozenset(nets("10.0.0.0/16", "10.7.0.0/16"))


def test_a_rejected_duplicate_key_does_not_claim_its_prefixes() -> None:
    a = record("a", 1, "10.0.1.0/24", created=0)
    b = record("b", 1, "10.0.2.0/24", created=1)
    c = record("c", 2, "10.0.2.0/24", created=2)
    assert accepted([a, b, c]) == {"a", "c"}
    assert set(rejected([a, b, c])) == {"b"}


# -- default routes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0.0.0.0/0", True, id="v4-default"),
        pytest.param("::/0", True, id="v6-default"),
        pytest.param("0.0.0.0/1", False, id="half"),
        pytest.param("10.0.0.0/8", False, id="private"),
    ],
)
def test_only_a_zero_length_prefix_is_a_default_route(text: str, expected: bool) -> None:
    assert is_default_route(net(text)) is expected


def test_a_default_route_stays_in_allowed_ips_but_gets_no_route() -> None:
    hub = DeviceSpec(name="wg0", private_key=priv("hub"), addresses=(iface("100.96.0.1/32"),))
    state, rejections = hub_state(hub, [record("exit", 1, "::/0", "10.0.1.0/24")])
    assert rejections == []
    assert state.peers is not None
    assert state.peers[pub(1)].allowed_ips == nets("10.0.1.0/24", "::/0")
    assert state.routes == frozenset(nets("10.0.1.0/24"))


def test_a_hub_without_addresses_accepts_default_routes_in_both_families_without_routes() -> None:
    hub = DeviceSpec(name="wg0", private_key=priv("hub"))
    state, rejections = hub_state(hub, [record("exit", 1, "0.0.0.0/0", "::/0")])
    assert rejections == []
    assert state.peers is not None
    assert state.peers[pub(1)].allowed_ips == nets("0.0.0.0/0", "::/0")
    assert state.routes == frozenset()


# -- the rule as a whole ---------------------------------------------------------------------


def reference(device: DeviceSpec, records: Sequence[PeerRecord]) -> tuple[set[str], set[str]]:
    """The conflict rule the slow and obvious way: compare every pair."""
    own = device.private_key.public_key()
    taken: list[IPNetwork] = [ipaddress.ip_network(a.ip) for a in device.addresses]
    keys: set[object] = {own}
    ok: set[str] = set()
    bad: set[str] = set()
    for rec in sorted(records, key=lambda r: (r.created, r.node)):
        clash = any(
            mine.version == theirs.version and mine.overlaps(theirs)
            for mine in rec.allowed_ips
            for theirs in taken
        )
        if rec.public_key in keys or clash:
            bad.add(rec.node)
            continue
        ok.add(rec.node)
        keys.add(rec.public_key)
        taken.extend(rec.allowed_ips)
    return ok, bad


def random_records(rng: random.Random, count: int) -> list[PeerRecord]:
    records = []
    for i in range(count):
        allowed = set()
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.8:
                length = rng.choice([16, 20, 24, 28, 32])
                base = ipaddress.ip_address(
                    rng.choice([0x0A000000, 0x64600000]) + rng.getrandbits(16)
                )
                allowed.add(ipaddress.ip_network(f"{base}/{length}", strict=False))
            else:
                length = rng.choice([48, 64, 128])
                base = ipaddress.ip_address((0xFD96 << 112) + (rng.getrandbits(20) << 80))
                allowed.add(ipaddress.ip_network(f"{base}/{length}", strict=False))
        records.append(
            PeerRecord(
                node=f"n{i:03d}",
                public_key=pub(rng.randrange(count * 2)),
                endpoint=None,
                allowed_ips=normalize_networks(allowed),
                created=at(rng.randrange(50)),
            )
        )
    return records


@pytest.mark.parametrize("seed", range(30))
def test_the_conflict_rule_matches_a_pairwise_reference_whatever_the_input_order(
    seed: int,
) -> None:
    rng = random.Random(seed)
    records = random_records(rng, rng.randint(5, 150))
    ok, bad = reference(HUB, records)
    assert ok, "the generator must produce accepted peers"
    assert bad, "the generator must produce conflicts"
    state, rejections = hub_state(HUB, records)
    assert accepted(records) == ok
    assert {r.node for r in rejections} == bad
    assert all(r.reason == CONFLICT for r in rejections)
    assert state.peers is not None
    assert state.routes == frozenset(n for p in state.peers.values() for n in p.allowed_ips)
    shuffled = list(records)
    rng.shuffle(shuffled)
    assert hub_state(HUB, shuffled) == (state, rejections)


def test_five_thousand_peers_are_computed_correctly() -> None:
    records = [
        record(
            f"spoke-{i:04d}", i, str(ipaddress.ip_network((0x0A000000 + i * 256, 24))), created=i
        )
        for i in range(5000)
    ]
    # Younger Nodes that each collide with one of the above, in different ways.
    records += [record(f"dup-key-{i}", i, f"172.16.{i}.0/24", created=9000) for i in range(0, 50)]
    records += [
        record(f"nested-{i}", 10_000 + i, f"10.0.{i}.128/25", created=9000) for i in range(50)
    ]
    records += [record("super", 20_000, "10.0.0.0/8", created=9000)]
    random.Random(1).shuffle(records)
    state, rejections = hub_state(HUB, records)
    assert state.peers is not None
    assert len(state.peers) == 5000
    assert len(rejections) == 101
    assert all(r.reason == CONFLICT for r in rejections)
    assert {r.node for r in rejections} == (
        {f"dup-key-{i}" for i in range(50)} | {f"nested-{i}" for i in range(50)} | {"super"}
    )
    assert len(state.routes) == 5000
    assert net("10.0.19.0/24") in state.routes
    assert net("10.19.135.0/24") in state.routes  # spoke-4999: 10.0.0.0 + 4999 * 256
    assert state.peers[pub(4999)].allowed_ips == nets("10.19.135.0/24")

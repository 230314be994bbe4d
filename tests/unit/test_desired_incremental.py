"""The hub's desired state kept Node by Node (HubDesired) equals a full recomputation
(hub_state) after every event of any sequence: the conflict rule (oldest Node wins) holds."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.builders import ep, iface, net, priv, pub, record
from wgkube.desired.hub import HubDesired, _Holders, hub_state
from wgkube.desired.model import DesiredState, DeviceSpec, Rejection
from wgkube.desired.protected import Protected
from wgkube.domain.annotations import HubRecord, PeerRecord

HUB = DeviceSpec(name="wg0", private_key=priv("hub"), addresses=(iface("100.96.0.1/24"),))
PROTECTED = (Protected.address(net("10.9.9.9/32").network_address, "the API server 10.9.9.9"),)
LEARNED = {pub(3): ep("10.1.2.7:51820"), pub(9): ep("10.2.0.1:51820")}
OTHER_HUB = HubRecord(
    node="hub-b",
    public_key=pub(7),
    endpoint=ep("203.0.113.50:51820"),
    allowed_ips=(net("100.96.0.0/24"),),
    addresses=(net("100.96.0.5/32"),),
)
"""Another hub, peered on its own address, which some generated Nodes claim too."""

NAMES = [f"n{i}" for i in range(6)]
# Nested, overlapping and disjoint prefixes, the hub's own, the API server's, dual stack.
PREFIXES = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.3.0/24",
    "10.2.0.0/16",
    "10.9.9.0/24",
    "100.96.0.5/32",
    "192.168.0.0/24",
    "fd00::/64",
    "fd00::/48",
]
ENDPOINTS = [None, "10.1.2.3:51820", "10.2.5.5:51820", "203.0.113.1:51820", "[fd00::7]:51820"]

records = st.builds(
    lambda name, key, allowed, created, endpoint: record(
        name, key, *allowed, created=created, endpoint=endpoint
    ),
    st.sampled_from(NAMES),
    st.sampled_from([1, 2, 3, 4, "hub-own"]),
    st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=3, unique=True),
    st.sampled_from([0, 1, 2]),  # ties: then the name decides
    st.sampled_from(ENDPOINTS),
)
events = st.lists(
    st.one_of(records, st.sampled_from(NAMES)),  # a name alone: that Node is gone
    min_size=1,
    max_size=25,
)


def own_key_record(r: PeerRecord) -> PeerRecord:
    """Key "hub-own" stands for the hub's own public key (a conflict of its own)."""
    if r.public_key != pub("hub-own"):
        return r
    return dataclasses.replace(r, public_key=priv("hub").public_key())


def outcome(state: DesiredState, rejections: list[Rejection]) -> tuple[object, ...]:
    # Messages too: they name who holds the key or prefix, which must agree as well.
    by_node = {r.node: (r.reason, r.message) for r in rejections}
    return dict(state.peers or {}), state.routes, by_node


@settings(max_examples=300, deadline=None)
@given(events, st.sampled_from([None, (net("10.0.0.0/8"),)]), st.sampled_from([(), (OTHER_HUB,)]))
def test_the_kept_state_equals_a_full_recomputation_after_every_event(
    sequence: list[PeerRecord | str],
    peer_cidrs: tuple[object, ...] | None,
    hubs: tuple[HubRecord, ...],
) -> None:
    cidrs = tuple(net(str(n)) for n in peer_cidrs) if peer_cidrs else None
    kept = HubDesired(HUB, persistent_keepalive=25, peer_cidrs=cidrs)
    kept.reset([], protected=PROTECTED, learned_endpoints=LEARNED, hubs=hubs)
    current: dict[str, PeerRecord] = {}
    for item in sequence:
        if isinstance(item, str):
            current.pop(item, None)
            changed = kept.update({item: None})
        else:
            r = own_key_record(item)
            before = kept.state()
            current[r.node] = r
            changed = kept.update({r.node: r})
            after = kept.state()
            assert before.peers is not None
            assert after.peers is not None
            differing = {
                k
                for k in set(before.peers) | set(after.peers)
                if before.peers.get(k) != after.peers.get(k)
            }
            assert changed == differing
        full = hub_state(
            HUB,
            list(current.values()),
            persistent_keepalive=25,
            protected=PROTECTED,
            learned_endpoints=LEARNED,
            peer_cidrs=cidrs,
            hubs=hubs,
        )
        assert outcome(kept.state(), kept.rejections()) == outcome(*full)
        del changed


def test_a_younger_node_shut_out_comes_in_when_the_older_one_goes() -> None:
    kept = HubDesired(HUB)
    kept.reset([record("old", 1, "10.1.0.0/16", created=0)])
    changed = kept.update({"young": record("young", 2, "10.1.2.0/24", created=5)})
    assert changed == set()
    assert [r.node for r in kept.rejections()] == ["young"]
    changed = kept.update({"old": None})
    assert changed == {pub(1), pub(2)}
    assert set(kept.state().peers or {}) == {pub(2)}
    assert kept.rejections() == []


def test_a_chain_of_conflicts_is_followed_to_its_end() -> None:
    # a shuts out b; with b out, c is in. Without a, b is in and shuts out c.
    kept = HubDesired(HUB)
    kept.reset(
        [
            record("a", 1, "10.1.0.0/16", created=0),
            record("b", 2, "10.1.2.0/24", "10.2.0.0/16", created=1),
            record("c", 3, "10.2.3.0/24", created=2),
        ]
    )
    assert set(kept.state().peers or {}) == {pub(1), pub(3)}
    changed = kept.update({"a": None})
    assert changed == {pub(1), pub(2), pub(3)}
    assert set(kept.state().peers or {}) == {pub(2)}
    assert [r.node for r in kept.rejections()] == ["c"]


def test_a_change_with_no_conflict_touches_only_its_own_peer() -> None:
    kept = HubDesired(HUB)
    kept.reset([record(f"n{i}", i, f"10.{i // 250}.{i % 250}.0/24") for i in range(500)])
    changed = kept.update({"n7": record("n7", 7, "10.200.0.0/24")})
    assert changed == {pub(7)}
    assert net("10.200.0.0/24") in kept.state().routes
    assert net("10.0.7.0/24") not in kept.state().routes


def test_holders_keep_one_value_bare_and_a_set_from_the_second() -> None:
    held: _Holders[str, str] = _Holders()
    assert held.add("10.0.0.0/24", "a") is True
    assert held.add("10.0.0.0/24", "a") is False
    assert list(held.of("10.0.0.0/24")) == ["a"]
    assert held.add("10.0.0.0/24", "b") is False
    assert set(held.of("10.0.0.0/24")) == {"a", "b"}
    assert held.discard("10.0.0.0/24", "c") is False
    assert held.discard("10.0.0.0/24", "a") is False
    assert list(held.of("10.0.0.0/24")) == ["b"]
    assert held.discard("10.0.0.0/24", "a") is False
    assert held.discard("10.0.0.0/24", "b") is True
    assert list(held.of("10.0.0.0/24")) == []
    assert held.discard("10.0.0.0/24", "b") is False

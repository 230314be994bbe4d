"""A hub's relays, from tables: direct or through which hub per spoke, the hold-down, never
through a hub that is down, no flapping; the relay interfaces and the routes they take."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from tests.unit.builders import ep, iface, nets, priv, pub
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.desired.relay import (
    Path,
    RelayPolicy,
    after,
    cannot_deliver,
    is_down,
    relay_interface_name,
    relay_links,
    relay_ports,
    route_via,
    split_routes,
    wants_relay_echoes,
)
from wgkube.domain.annotations import HubRecord

POLICY = RelayPolicy(interval=0.2, misses=3, startup_misses=10, hold_down=30.0)
NOW = 1000.0
UP = Path(misses=0, answered_once=True, answering_since=NOW - 60)
"""Answering for a minute."""
LOST = Path(misses=3, answered_once=True)
"""Answered before, then 3 in a row unanswered."""
FLAKY = Path(misses=2, answered_once=True)
FRESH = Path()
NEVER = Path(misses=40, answered_once=False)
"""Never answered (an agent that does not answer echoes): 40 misses say nothing."""
BACK = Path(misses=0, answered_once=True, answering_since=NOW - 5)
"""Answering again for 5 s: inside the hold-down."""
ORDER = ("hub-b", "hub-c")


def choose(
    current: str | None,
    direct: Path,
    via: Mapping[str, Path] | None = None,
    hubs: Mapping[str, Path] | None = None,
) -> str | None:
    via = {"hub-b": UP, "hub-c": UP} if via is None else via
    hubs = {"hub-b": UP, "hub-c": UP} if hubs is None else hubs
    return route_via(current, direct, via, hubs, ORDER, NOW, POLICY)


@pytest.mark.parametrize(
    ("current", "direct", "via", "hubs", "expected"),
    [
        # delivered directly
        (None, UP, None, None, None),
        (None, FLAKY, None, None, None),  # 2 misses: a fault shorter than 3 moves nothing
        (None, NEVER, None, None, None),  # never answered: never judged
        (None, LOST, None, None, "hub-b"),  # the preferred other hub that answers
        (None, LOST, None, {"hub-b": LOST, "hub-c": UP}, "hub-c"),  # never a down hub
        (None, LOST, None, {"hub-b": FRESH, "hub-c": UP}, "hub-c"),  # not answering yet
        (None, LOST, {"hub-b": FRESH, "hub-c": UP}, None, "hub-c"),  # spoke not through b
        (None, LOST, {"hub-b": LOST, "hub-c": LOST}, None, None),  # nobody reaches it
        (None, LOST, None, {"hub-b": LOST, "hub-c": LOST}, None),  # every hub is down
        # relayed through hub-b
        ("hub-b", LOST, None, None, "hub-b"),
        ("hub-b", BACK, None, None, "hub-b"),  # answers again, inside the hold-down
        ("hub-b", UP, None, None, None),  # a minute without a miss: directly again
        ("hub-b", FLAKY, None, None, "hub-b"),
        ("hub-b", FRESH, {}, {}, "hub-b"),  # adopted at restart: nothing known, nothing moves
        ("hub-b", LOST, None, {"hub-b": LOST, "hub-c": UP}, "hub-c"),  # b went down
        ("hub-b", BACK, None, {"hub-b": LOST, "hub-c": UP}, None),  # b down, direct answers
        ("hub-b", LOST, None, {"hub-b": LOST, "hub-c": LOST}, None),  # none: not through b
        ("hub-b", LOST, {"hub-b": LOST, "hub-c": UP}, None, "hub-c"),  # b lost the spoke
        ("hub-b", LOST, None, {"hub-b": NEVER, "hub-c": UP}, "hub-c"),  # b dead since start
        ("hub-x", LOST, None, None, "hub-b"),  # relayed through a hub that left
    ],
)
def test_the_route_of_one_spoke(
    current: str | None,
    direct: Path,
    via: Mapping[str, Path] | None,
    hubs: Mapping[str, Path] | None,
    expected: str | None,
) -> None:
    assert choose(current, direct, via, hubs) == expected


@pytest.mark.parametrize(
    ("path", "down", "undeliverable"),
    [
        (UP, False, False),
        (FLAKY, False, False),
        (LOST, True, True),
        (FRESH, False, False),
        (Path(misses=9), False, False),
        (Path(misses=10), True, False),  # a relay path dead from the start; a spoke never
    ],
)
def test_what_counts_as_down(path: Path, down: bool, undeliverable: bool) -> None:
    assert is_down(path, POLICY) is down
    assert cannot_deliver(path, POLICY) is undeliverable


def test_an_answer_starts_a_run_and_a_miss_ends_it() -> None:
    path = after(Path(), True, 1.0)
    assert path == Path(misses=0, answered_once=True, answering_since=1.0)
    assert after(path, True, 2.0).answering_since == 1.0
    missed = after(path, False, 2.0)
    assert missed == Path(misses=1, answered_once=True, answering_since=None)
    assert after(missed, True, 3.0).answering_since == 3.0


@pytest.mark.parametrize(
    ("direct", "relayed", "expected"),
    [
        (UP, None, False),  # one echo per spoke while it answers directly
        (FRESH, None, False),
        (NEVER, None, False),
        (Path(misses=1, answered_once=True), None, True),  # from the first miss
        (UP, "hub-b", True),  # and while relayed
    ],
)
def test_echoes_through_the_other_hubs_only_when_they_may_be_needed(
    direct: Path, relayed: str | None, expected: bool
) -> None:
    assert wants_relay_echoes(direct, relayed) is expected


def run(pattern: str, *, hold_down: float = 2.0) -> list[tuple[float, str | None]]:
    """Feed one direct answer per tick ('.' answered, 'x' missed) with the other hub and
    the spoke through it answering; the route changes with their times."""
    policy = RelayPolicy(interval=0.2, misses=3, startup_misses=10, hold_down=hold_down)
    direct, current = Path(), None
    changes: list[tuple[float, str | None]] = []
    for tick, mark in enumerate(pattern):
        now = tick * 0.2
        direct = after(direct, mark == ".", now)
        chosen = route_via(current, direct, {"hub-b": UP}, {"hub-b": UP}, ("hub-b",), now, policy)
        if chosen != current:
            changes.append((round(now, 1), chosen))
            current = chosen
    return changes


def test_one_fault_is_one_relay_and_one_return_a_hold_down_after_it_cleared() -> None:
    changes = run("....." + "x" * 10 + "." * 20)
    assert changes == [(1.4, "hub-b"), (5.0, None)]  # third miss; 2 s after answering again


def test_a_fault_shorter_than_the_misses_moves_nothing() -> None:
    assert run("....." + "xx" + "." * 20) == []


def test_a_flapping_path_is_relayed_once_and_stays_relayed() -> None:
    changes = run("....." + "xxx" + "....x" * 10)
    assert changes == [(1.4, "hub-b")]


# -- the relay interfaces -----------------------------------------------------------------

KEY = priv("hub-a")
DEVICE = DeviceSpec(
    name="wg0", private_key=KEY, listen_port=51820, addresses=(iface("100.96.0.254/32"),)
)


def hub(node: str, **fields: object) -> HubRecord:
    base: dict[str, object] = {
        "node": node,
        "public_key": pub(node),
        "endpoint": ep(f"198.18.0.{len(node)}:51820"),
        "allowed_ips": nets("100.96.0.0/24"),
        "addresses": nets("100.96.0.253/32"),
        "relay_ports": (("hub-a", 51821),),
    }
    base.update(fields)
    return HubRecord.model_validate(base)


def test_each_hub_keeps_a_port_per_other_hub_by_node_name() -> None:
    hubs = [hub("hub-c"), hub("hub-a"), hub("hub-b")]
    assert relay_ports("hub-a", hubs, 51820) == (("hub-b", 51821), ("hub-c", 51822))
    assert relay_ports("hub-a", [hub("hub-a")], 51820) == ()


def test_relay_interface_names_fit_the_kernels_fifteen_characters() -> None:
    assert relay_interface_name("wg0", 1) == "wg0-r1"
    assert relay_interface_name("wg-hub-a", 2) == "wg-hub-a-r2"
    assert relay_interface_name("a-very-long-name", 1) == "a-very-long--r1"


def test_a_relay_link_dials_the_port_the_other_hub_keeps_for_us_with_the_shared_range() -> None:
    b = hub("hub-b", endpoint=ep("198.18.0.2:51820"), relay_ports=(("hub-a", 51825),))
    (link,) = relay_links(DEVICE, "hub-a", [b], persistent_keepalive=25)
    assert link.hub == "hub-b"
    assert link.device.name == "wg0-r1"
    assert link.device.listen_port == 51821  # ours for hub-b
    assert link.device.private_key == KEY
    assert link.device.addresses == DEVICE.addresses
    assert link.peer == PeerSpec(
        public_key=pub("hub-b"),
        endpoint=ep("198.18.0.2:51825"),
        allowed_ips=nets("100.96.0.0/24"),
        persistent_keepalive=25,
    )
    assert link.hub_routes == nets("100.96.0.253/32")


@pytest.mark.parametrize(
    "other",
    [
        hub("hub-b", relay_ports=()),  # from before relays
        hub("hub-b", relay_ports=(("hub-x", 51821),)),  # has not seen us yet
        hub("hub-b", endpoint=None),
    ],
    ids=["old hub", "not told of us", "no endpoint"],
)
def test_no_relay_link_to_a_hub_that_keeps_no_port_for_us(other: HubRecord) -> None:
    assert relay_links(DEVICE, "hub-a", [other]) == ()


def test_one_hub_has_no_relay_link() -> None:
    assert relay_links(DEVICE, "hub-a", []) == ()


def test_a_relay_link_keeps_its_index_by_node_name() -> None:
    links = relay_links(DEVICE, "hub-a", [hub("hub-c"), hub("hub-b", relay_ports=())])
    assert [(link.hub, link.device.name, link.device.listen_port) for link in links] == [
        ("hub-c", "wg0-r2", 51822)
    ]


def main_state() -> DesiredState:
    peers = {
        pub("spoke-1"): PeerSpec(pub("spoke-1"), None, nets("100.96.0.11/32", "10.1.0.0/24")),
        pub("spoke-2"): PeerSpec(pub("spoke-2"), None, nets("100.96.0.12/32")),
        pub("hub-b"): PeerSpec(pub("hub-b"), None, nets("100.96.0.253/32")),
    }
    routes = frozenset(n for p in peers.values() for n in p.allowed_ips)
    return DesiredState(device=DEVICE, peers=peers, routes=routes)


def test_a_relayed_spokes_routes_and_the_other_hubs_address_move_to_its_relay_interface() -> None:
    (link,) = relay_links(DEVICE, "hub-a", [hub("hub-b")])
    main, relays = split_routes(main_state(), [link], {pub("spoke-1"): "hub-b"})
    assert main.routes == frozenset(nets("100.96.0.12/32"))
    assert main.peers == main_state().peers  # the peers stay: only routes move
    assert set(relays) == {"wg0-r1"}
    assert relays["wg0-r1"].routes == frozenset(
        nets("100.96.0.11/32", "10.1.0.0/24", "100.96.0.253/32")
    )
    assert relays["wg0-r1"].peers == {pub("hub-b"): link.peer}


def test_without_relays_only_the_other_hubs_address_moves() -> None:
    (link,) = relay_links(DEVICE, "hub-a", [hub("hub-b")])
    main, relays = split_routes(main_state(), [link], {})
    assert main.routes == main_state().routes - {nets("100.96.0.253/32")[0]}
    assert relays["wg0-r1"].routes == frozenset(nets("100.96.0.253/32"))


def test_a_spoke_relayed_through_a_hub_without_a_link_or_a_gone_spoke_stays_put() -> None:
    (link,) = relay_links(DEVICE, "hub-a", [hub("hub-b")])
    main, relays = split_routes(
        main_state(), [link], {pub("spoke-1"): "hub-x", pub("spoke-9"): "hub-b"}
    )
    assert nets("100.96.0.11/32")[0] in main.routes
    assert relays["wg0-r1"].routes == frozenset(nets("100.96.0.253/32"))


def test_one_hub_splits_nothing() -> None:
    assert split_routes(main_state(), [], {}) == (main_state(), {})
    unknown = DesiredState(device=DEVICE, peers=None)
    assert split_routes(unknown, [], {pub("spoke-1"): "hub-b"}) == (unknown, {})

"""Peer health from handshake age, receive counter and an injected clock."""

from __future__ import annotations

import pytest

from wgkube.desired.health import (
    HANDSHAKE_LIMIT,
    PeerState,
    Sample,
    Thresholds,
    Track,
    Transition,
    count,
    follow,
    peer_state,
    transitions,
)

UP, DOWN, UNKNOWN = PeerState.UP, PeerState.DOWN, PeerState.UNKNOWN
NOW = 1_000_000.0
DEFAULT = Thresholds()
KEEPALIVE = Thresholds(keepalive=25, keepalive_misses=3)


def test_the_handshake_limit_is_wireguards_own_reject_plus_rekey_attempt_plus_timeout() -> None:
    assert HANDSHAKE_LIMIT == 180 + 90 + 5 == DEFAULT.handshake_limit


@pytest.mark.parametrize(
    ("case", "handshake_age", "rx_silent", "endpoint_changed_ago", "thresholds", "want"),
    [
        ("never a handshake", None, 0, None, DEFAULT, UNKNOWN),
        ("never a handshake, long after", None, 10_000, None, KEEPALIVE, UNKNOWN),
        ("fresh handshake", 5, 0, None, DEFAULT, UP),
        ("handshake just under the limit", 274.9, 200, None, DEFAULT, UP),
        ("handshake just over the limit", 275.1, 0, None, DEFAULT, DOWN),
        ("old handshake without keepalive rule, silent", 200, 200, None, DEFAULT, UP),
        ("keepalive: silent for 3 intervals exactly", 100, 75, None, KEEPALIVE, UP),
        ("keepalive: silent for more than 3 intervals", 100, 76, None, KEEPALIVE, DOWN),
        ("keepalive: bytes keep arriving", 100, 10, None, KEEPALIVE, UP),
        ("keepalive: a recent handshake counts as heard", 10, 500, None, KEEPALIVE, UP),
        ("endpoint changed, old handshake, within window", 60, 0, 5, DEFAULT, UNKNOWN),
        ("endpoint changed, handshake since", 2, 0, 5, DEFAULT, UP),
        ("endpoint changed, window over", 60, 0, 16, DEFAULT, UP),
        ("endpoint changed, window over, too old", 300, 0, 16, DEFAULT, DOWN),
        ("endpoint changed within window: keepalive rule waits", 3, 500, 5, KEEPALIVE, UP),
        (
            "shortened limit",
            6,
            0,
            None,
            Thresholds(handshake_limit=5, settle=1),
            DOWN,
        ),
    ],
)
def test_peer_state_table(
    case: str,
    handshake_age: float | None,
    rx_silent: float,
    endpoint_changed_ago: float | None,
    thresholds: Thresholds,
    want: PeerState,
) -> None:
    handshake = 0.0 if handshake_age is None else NOW - handshake_age
    sample = Sample(last_handshake=handshake, rx_bytes=100, endpoint="192.0.2.1:51820")
    changed = 0.0 if endpoint_changed_ago is None else NOW - endpoint_changed_ago
    track = Track(100, NOW - rx_silent, "192.0.2.1:51820", changed)
    assert peer_state(sample, track, NOW, thresholds) is want, case


def test_a_peer_seen_first_starts_its_counter_clock_now_and_no_endpoint_change() -> None:
    sample = Sample(NOW - 100, 42, "192.0.2.1:51820")
    track = follow(None, sample, NOW)
    assert track == Track(42, NOW, "192.0.2.1:51820", 0.0)
    # So a restarted hub calls a peer with a 100 s old handshake up at once.
    assert peer_state(sample, track, NOW, KEEPALIVE) is UP


def test_the_counter_clock_moves_only_when_the_counter_moves() -> None:
    first = follow(None, Sample(NOW - 5, 42, "e"), NOW)
    same = follow(first, Sample(NOW - 5, 42, "e"), NOW + 30)
    assert same.rx_moved_at == NOW
    moved = follow(same, Sample(NOW - 5, 50, "e"), NOW + 60)
    assert moved.rx_moved_at == NOW + 60
    reset = follow(moved, Sample(NOW - 5, 3, "e"), NOW + 90)
    assert reset.rx_moved_at == NOW + 90


def test_an_endpoint_change_restarts_the_settle_window() -> None:
    first = follow(None, Sample(NOW - 5, 1, "192.0.2.1:51820"), NOW)
    roamed = follow(first, Sample(NOW - 5, 1, "192.0.2.9:51820"), NOW + 10)
    assert roamed.endpoint_changed_at == NOW + 10
    assert peer_state(Sample(NOW - 5, 1, "192.0.2.9:51820"), roamed, NOW + 12, DEFAULT) is UNKNOWN
    kept = follow(roamed, Sample(NOW - 5, 1, "192.0.2.9:51820"), NOW + 20)
    assert kept.endpoint_changed_at == NOW + 10


def test_a_silent_peer_goes_down_and_comes_back_up_with_traffic() -> None:
    thresholds = Thresholds(keepalive=1, keepalive_misses=3, handshake_limit=275)
    track = follow(None, Sample(NOW - 1, 10, "e"), NOW)
    states = []
    for t, rx in [(1, 10), (2, 10), (2.9, 10), (4, 10), (6, 20)]:
        sample = Sample(NOW - 1, rx, "e")
        track = follow(track, sample, NOW + t)
        states.append(peer_state(sample, track, NOW + t, thresholds))
    assert states == [UP, UP, UP, DOWN, UP]


def test_counts_name_every_state_even_at_zero() -> None:
    assert count([UP, UP, DOWN]) == {UP: 2, DOWN: 1, UNKNOWN: 0}
    assert count([]) == {UP: 0, DOWN: 0, UNKNOWN: 0}


@pytest.mark.parametrize(
    ("before", "after", "want"),
    [
        ({"a": UP}, {"a": UP}, []),
        ({"a": UP}, {"a": DOWN}, [Transition("a", UP, DOWN)]),
        ({"a": UNKNOWN}, {"a": DOWN}, [Transition("a", UNKNOWN, DOWN)]),
        ({"a": DOWN}, {"a": UP}, [Transition("a", DOWN, UP)]),
        ({"a": UNKNOWN}, {"a": UP}, [Transition("a", UNKNOWN, UP)]),
        ({"a": UP}, {"a": UNKNOWN}, []),
        ({"a": DOWN}, {"a": UNKNOWN}, []),
        ({}, {"a": UP}, []),
        ({"a": UP}, {}, []),
        (
            {"a": UP, "b": UP, "c": DOWN},
            {"a": DOWN, "b": UP, "c": UP},
            [Transition("a", UP, DOWN), Transition("c", DOWN, UP)],
        ),
    ],
)
def test_transitions_worth_an_event(
    before: dict[str, PeerState], after: dict[str, PeerState], want: list[Transition]
) -> None:
    assert transitions(before, after) == want

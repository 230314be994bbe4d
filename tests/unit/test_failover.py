"""Several hubs, pure: the preference order, health from probes, the failover choice."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from tests.unit.builders import T0, nets, pub
from wgkube.desired.failover import (
    FailoverPolicy,
    HubHealth,
    after_probe,
    choose,
    handshake_fresh,
    is_down,
    may_lead,
    preference,
)
from wgkube.domain.annotations import HubRecord

POLICY = FailoverPolicy(interval=0.2, misses=3, hold_down=10.0, handshake_limit=275.0)
ORDER = ("a", "b", "c")


def hub(name: str, priority: int = 0, age_days: int | None = None) -> HubRecord:
    return HubRecord(
        node=name,
        public_key=pub(name),
        endpoint=None,
        allowed_ips=nets("100.96.0.0/24"),
        priority=priority,
        created=None if age_days is None else T0 - timedelta(days=age_days),
    )


@pytest.mark.parametrize(
    ("hubs", "expected"),
    [
        ([hub("b"), hub("a")], ["a", "b"]),
        ([hub("a"), hub("b", priority=5)], ["b", "a"]),
        ([hub("a", age_days=1), hub("b", age_days=9)], ["b", "a"]),
        ([hub("a"), hub("b", age_days=1)], ["b", "a"]),  # an unknown age sorts last
        ([hub("a", priority=-1, age_days=9), hub("b", age_days=1)], ["b", "a"]),
        ([hub("c", 1, 3), hub("a", 1, 3), hub("b", 2)], ["b", "a", "c"]),
    ],
    ids=["name", "priority", "oldest", "unknown-age", "priority-beats-age", "mixed"],
)
def test_every_spoke_orders_hubs_by_priority_then_age_then_name(
    hubs: list[HubRecord], expected: list[str]
) -> None:
    assert [h.node for h in preference(hubs)] == expected
    assert preference(reversed(hubs)) == preference(hubs)


def run(outcomes: str, start: float = 0.0, health: HubHealth | None = None) -> HubHealth:
    """Fold probe outcomes ('1' answered, '0' missed) one interval apart."""
    h = health or HubHealth()
    for i, outcome in enumerate(outcomes):
        h = after_probe(h, outcome == "1", start + i * POLICY.interval, POLICY)
    return h


@pytest.mark.parametrize(
    ("outcomes", "down", "was_down"),
    [
        ("", False, False),
        ("1", False, False),
        ("100", False, False),
        ("1000", True, True),
        ("1110", False, False),
        ("10001", False, True),
        ("1010101", False, False),  # scattered loss never adds up to three in a row
        ("11000", True, True),
        # not answered once yet (a join under way): down only after the startup misses
        ("000", False, False),
        ("0" * 49, False, False),
        ("0" * 50, True, False),
        ("0" * 50 + "1", False, False),  # then it answers: it never failed
    ],
)
def test_a_hub_is_down_after_three_probes_in_a_row_go_unanswered(
    outcomes: str, down: bool, was_down: bool
) -> None:
    h = run(outcomes)
    assert is_down(h, POLICY) is down
    assert h.was_down is was_down


def test_a_recovered_hub_may_lead_only_after_a_hold_down_without_a_miss() -> None:
    h = run("1111000" + "1")  # down, then answering again from t = 1.4
    assert not may_lead(h, 1.4 + 9.9, POLICY)
    assert may_lead(h, 1.4 + 10.0, POLICY)
    again = after_probe(h, False, 5.0, POLICY)  # one miss restarts the hold-down
    assert not may_lead(after_probe(again, True, 5.2, POLICY), 5.2 + 9.9, POLICY)


def test_a_hub_never_down_leads_from_its_first_answer() -> None:
    assert may_lead(run("1"), 0.0, POLICY)
    assert may_lead(run("0001"), 0.6, POLICY), "slow to join is not down"
    assert not may_lead(HubHealth(), 0.0, POLICY)


UP = run("1")
DOWN = run("1000")
HELD = run("10001", start=99.8)  # answering again since t = 100.6, down before
BACK = run("10001", start=-0.2)  # answering again since t = 0.6: past the hold-down at 20


@pytest.mark.parametrize(
    ("active", "health", "now", "expected"),
    [
        # start: the first that leads, else the first not known to be down
        (None, {}, 0.0, "a"),
        (None, {"a": DOWN, "b": UP}, 0.0, "b"),
        (None, {"a": DOWN, "b": DOWN, "c": DOWN}, 0.0, "a"),
        ("gone", {"a": UP}, 0.0, "a"),
        # steady: the active hub stays while it is not down
        ("a", {"a": UP, "b": UP}, 0.0, "a"),
        ("b", {"a": run("100"), "b": UP}, 0.0, "b"),  # two misses are not a fault
        ("a", {"a": run("100"), "b": UP}, 0.0, "a"),
        ("a", {"a": run("0" * 20), "b": UP}, 0.0, "a"),  # still joining: no failover
        ("a", {"a": run("0" * 50), "b": UP}, 0.0, "b"),  # dead from the start
        # failover: to the best answering hub
        ("a", {"a": DOWN, "b": UP, "c": UP}, 0.0, "b"),
        ("a", {"a": DOWN, "b": DOWN, "c": UP}, 0.0, "c"),
        ("a", {"a": DOWN, "b": HELD, "c": UP}, 101.0, "c"),  # c leads, b is held down
        ("a", {"a": DOWN, "b": HELD}, 101.0, "b"),  # held down, but the only one answering
        ("a", {"a": DOWN, "b": DOWN}, 0.0, "a"),  # nothing answers: nothing moves
        ("a", {"a": DOWN, "b": {}}, 0.0, "a"),  # b not probed yet: not answering
        ("a", {"a": DOWN, "b": run("0001")}, 0.0, "b"),  # b joined late: it leads at once
        # failback: only to a more preferred hub past its hold-down
        ("b", {"a": HELD, "b": UP}, 105.0, "b"),
        ("b", {"a": HELD, "b": UP}, 110.6, "a"),
        ("b", {"a": BACK, "b": UP}, 20.0, "a"),
        ("a", {"a": UP, "b": BACK}, 20.0, "a"),  # never towards a less preferred hub
        ("c", {"a": DOWN, "b": BACK, "c": UP}, 20.0, "b"),
    ],
)
def test_the_failover_choice(
    active: str | None, health: dict[str, HubHealth | dict[str, None]], now: float, expected: str
) -> None:
    states = {k: v for k, v in health.items() if isinstance(v, HubHealth)}
    assert choose(active, ORDER, states, now, POLICY) == expected


def test_no_hub_announced_means_no_choice() -> None:
    assert choose("a", (), {}, 0.0, POLICY) is None


def simulate(faults: Sequence[tuple[float, float]], until: float) -> list[tuple[float, str]]:
    """Hub a fails during each (start, end); b always answers. The route changes made."""
    health = {"a": HubHealth(), "b": HubHealth()}
    active: str | None = None
    changes: list[tuple[float, str]] = []
    steps = int(until / POLICY.interval)
    for step in range(steps):
        now = step * POLICY.interval
        a_ok = not any(start <= now < end for start, end in faults)
        health["a"] = after_probe(health["a"], a_ok, now, POLICY)
        health["b"] = after_probe(health["b"], True, now, POLICY)
        chosen = choose(active, ("a", "b"), health, now, POLICY)
        if chosen != active:
            if active is not None:
                changes.append((round(now, 1), chosen or ""))
            active = chosen
    return changes


def test_one_fault_moves_traffic_once_and_back_once_after_the_hold_down() -> None:
    changes = simulate([(5.0, 8.0)], until=40.0)
    assert [hub for _, hub in changes] == ["b", "a"]
    (failed_at, _), (back_at, _) = changes
    assert 5.0 < failed_at <= 5.0 + POLICY.misses * POLICY.interval
    assert back_at >= 8.0 + POLICY.hold_down


def test_a_flapping_hub_never_gets_traffic_back_while_it_flaps() -> None:
    flaps = [(5.0 + 3 * i, 6.0 + 3 * i) for i in range(8)]  # down 1 s in every 3 s
    changes = simulate(flaps, until=5.0 + 3 * 8)
    assert [hub for _, hub in changes] == ["b"]


def test_a_fault_shorter_than_the_misses_moves_nothing() -> None:
    assert simulate([(5.0, 5.0 + 2 * POLICY.interval)], until=20.0) == []


@pytest.mark.parametrize(
    ("last_handshake", "fresh"),
    [(0.0, None), (1000.0 - 275.0, True), (1000.0 - 276.0, False), (999.0, True)],
)
def test_the_handshake_backstop(last_handshake: float, fresh: bool | None) -> None:
    assert handshake_fresh(last_handshake, 1000.0, POLICY) is fresh

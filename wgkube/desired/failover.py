"""Several hubs: the preference order, each hub's health from data-path probes, and the
failover choice (health of each hub -> the active hub), all pure with the clock passed in.

A spoke sends one probe through each hub every `interval` seconds (wgkube.spoke_agent.
prober: a packet addressed to the spoke itself, which only comes back if the hub
decrypts, *forwards* and re-encrypts it). A hub is down after `misses` probes in a row
went unanswered (`startup_misses` while it has not answered once: a join is no fault);
the handshake age is a slower backstop for a hub that cannot be probed.

The choice is sticky. The active hub keeps the traffic while it answers. When it goes
down, traffic moves at once to the most preferred hub that answers. A hub that has been
down takes traffic back only after it has answered without a miss for `hold_down`
seconds (failback after a hold-down): a hub that flaps never gets traffic back, and one
fault moves a spoke's route at most once (and once more, a hold-down after the fault has
cleared, back to the preferred hub). When no hub answers, nothing moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from wgkube.desired.health import HANDSHAKE_LIMIT
from wgkube.domain.annotations import HubRecord

_LATEST = datetime.max.replace(tzinfo=UTC)


def preference(hubs: Iterable[HubRecord]) -> tuple[HubRecord, ...]:
    """The order every spoke prefers hubs in: the highest --hub-priority, then the oldest
    Node (one whose age is unknown last), then the name. The same on every spoke."""
    return tuple(sorted(hubs, key=lambda h: (-h.priority, h.created or _LATEST, h.node)))


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    """How fast a hub is judged and how long a recovered hub waits; settings map onto it."""

    interval: float = 0.2
    """Seconds between probes through each hub; also the time a probe has to come back."""
    misses: int = 3
    """Probes in a row without an answer before a hub is down: 3 x 0.2 s = 0.6 s."""
    startup_misses: int = 50
    """The same for a hub that has not answered once since the agent started (10 s at
    0.2 s): its handshake may still be under way (the hub learns a new spoke's key from
    the API), which is no failure to fail over on, while a hub dead from the start still
    counts as down before long."""
    hold_down: float = 30.0
    """Seconds a hub that was down must answer every probe before it takes traffic back."""
    handshake_limit: float = HANDSHAKE_LIMIT
    """Backstop: a hub whose last handshake is older than this is down (when probed or not)."""


@dataclass(frozen=True, slots=True)
class HubHealth:
    """What the probes through one hub have shown so far."""

    misses: int = 0
    """Probes unanswered in a row."""
    answered_once: bool = False
    """Any probe through this hub has come back since the agent started."""
    answering_since: float | None = None
    """When the current run of answered probes began; None while the hub does not answer."""
    was_down: bool = False
    """The hub has been down since this agent started: it needs the hold-down to lead."""


def handshake_fresh(last_handshake: float, wall_now: float, policy: FailoverPolicy) -> bool | None:
    """The backstop: False once a handshake is older than the limit; None (no verdict)
    while there has been none."""
    if last_handshake == 0:
        return None
    return wall_now - last_handshake <= policy.handshake_limit


def after_probe(health: HubHealth, answered: bool, now: float, policy: FailoverPolicy) -> HubHealth:
    """One probe's outcome folded into a hub's health."""
    if answered:
        since = health.answering_since if health.answering_since is not None else now
        return replace(health, misses=0, answering_since=since, answered_once=True)
    after = replace(health, misses=health.misses + 1, answering_since=None)
    # Only a hub that had answered can have failed: not answering yet is not a fault.
    failed = after.answered_once and is_down(after, policy)
    return replace(after, was_down=health.was_down or failed)


def is_down(health: HubHealth, policy: FailoverPolicy) -> bool:
    limit = policy.misses if health.answered_once else policy.startup_misses
    return health.misses >= limit


def is_answering(health: HubHealth) -> bool:
    return health.answering_since is not None


def may_lead(health: HubHealth, now: float, policy: FailoverPolicy) -> bool:
    """Answering, and past the hold-down if it has been down before."""
    if health.answering_since is None:
        return False
    return not health.was_down or now - health.answering_since >= policy.hold_down


def choose(
    active: str | None,
    order: Sequence[str],
    health: Mapping[str, HubHealth],
    now: float,
    policy: FailoverPolicy,
) -> str | None:
    """The hub that should carry this spoke's traffic (a Node name from `order`).

    `order` is the preference (`preference`), `active` the hub that carries it now (None
    at start or when it left the announcement). A hub missing from `health` has not
    been probed yet: it is not down, and it is not answering.
    """
    if not order:
        return None
    fresh = HubHealth()

    def of(name: str) -> HubHealth:
        return health.get(name, fresh)

    leaders = [n for n in order if may_lead(of(n), now, policy)]
    if active not in order:
        # Start (or the active hub was withdrawn): the first that leads, else the first
        # not known to be down, else simply the first.
        alive = [n for n in order if not is_down(of(n), policy)]
        return (leaders or alive or list(order))[0]
    assert active is not None
    if not is_down(of(active), policy):
        # Failback: only to a more preferred hub that passed its hold-down.
        if leaders and order.index(leaders[0]) < order.index(active):
            return leaders[0]
        return active
    # The active hub is down: move to the best hub that answers, held down or not.
    answering = [n for n in order if is_answering(of(n))]
    return (leaders or answering or [active])[0]

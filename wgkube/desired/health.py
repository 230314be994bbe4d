"""Peer health: handshake age, receive counter and time -> up, down or unknown (pure).

WireGuard has no liveness protocol of its own; what a node can see is when the last
handshake completed and whether bytes keep arriving. The kernel gives up on a session
REJECT_AFTER_TIME (180 s) after its handshake and retries a handshake for
REKEY_ATTEMPT_TIME (90 s), each try waiting REKEY_TIMEOUT (5 s): a handshake older
than their sum (275 s) means the peer is not answering. When the remote sends a
persistent keepalive, silence is visible much sooner: no byte received for a few
keepalive intervals.

The clock is always passed in, so every rule is a row in a table test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
HANDSHAKE_LIMIT = REJECT_AFTER_TIME + REKEY_ATTEMPT_TIME + REKEY_TIMEOUT
"""275 s: after this the kernel itself has given up on the session and the retries."""


class PeerState(StrEnum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"


STATES = (PeerState.UP, PeerState.DOWN, PeerState.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How long silence may last before a peer counts as down; tests shorten them."""

    handshake_limit: float = HANDSHAKE_LIMIT
    """Seconds after the last handshake when a peer is down, whatever else is seen."""
    settle: float = 15.0
    """Seconds after a peer first appears or its endpoint changes during which it is
    unknown unless a handshake completes: three REKEY_TIMEOUT tries."""
    keepalive: float = 0.0
    """Seconds between the keepalives the remote is expected to send; 0 turns the
    receive-counter rule off (a remote without keepalive may be silent when idle)."""
    keepalive_misses: int = 3
    """Keepalive intervals without a received byte before the peer is down."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One peer as read from the kernel at one scrape or reconcile."""

    last_handshake: float
    """Seconds since the epoch; 0 means never."""
    rx_bytes: int
    endpoint: str | None


@dataclass(frozen=True, slots=True)
class Track:
    """What one observation leaves for the next: when the counter and endpoint moved."""

    rx_bytes: int
    rx_moved_at: float
    endpoint: str | None
    endpoint_changed_at: float


def follow(previous: Track | None, sample: Sample, now: float) -> Track:
    """The track after `sample`.

    A peer seen for the first time (or by a process that just started) gets the benefit
    of the doubt: its counter counts as having moved now, and its endpoint as never
    changed, so a restart alone turns no fresh handshake into `unknown`. A counter that
    went down (the peer was removed and added again) counts as moved.
    """
    if previous is None:
        return Track(sample.rx_bytes, now, sample.endpoint, 0.0)
    rx_moved_at = previous.rx_moved_at if sample.rx_bytes == previous.rx_bytes else now
    changed_at = previous.endpoint_changed_at if sample.endpoint == previous.endpoint else now
    return Track(sample.rx_bytes, rx_moved_at, sample.endpoint, changed_at)


def peer_state(sample: Sample, track: Track, now: float, thresholds: Thresholds) -> PeerState:
    """The state of one peer at `now`, given its track already updated with `sample`."""
    if sample.last_handshake <= 0:
        return PeerState.UNKNOWN
    settling = now - track.endpoint_changed_at < thresholds.settle
    if settling and sample.last_handshake < track.endpoint_changed_at:
        return PeerState.UNKNOWN  # the old handshake says nothing about the new path
    if now - sample.last_handshake > thresholds.handshake_limit:
        return PeerState.DOWN
    if thresholds.keepalive > 0 and not settling:
        silent_for = now - max(track.rx_moved_at, sample.last_handshake)
        if silent_for > thresholds.keepalive * thresholds.keepalive_misses:
            return PeerState.DOWN
    return PeerState.UP


def count(states: Iterable[PeerState]) -> dict[PeerState, int]:
    """Peers per state, every state present (a gauge that vanishes at 0 hides alerts)."""
    out = dict.fromkeys(STATES, 0)
    for state in states:
        out[state] += 1
    return out


@dataclass(frozen=True, slots=True)
class Transition:
    peer: str
    old: PeerState | None
    new: PeerState


def transitions(
    before: Mapping[str, PeerState], after: Mapping[str, PeerState]
) -> list[Transition]:
    """Changes worth telling people about: into `down`, and into `up` from anything else.

    Leaving `up` for `unknown` (an endpoint change settling) is not news; peers that
    appear or vanish are the registry's business, not the tunnel's.
    """
    out = []
    for peer, new in sorted(after.items()):
        old = before.get(peer)
        if old == new or peer not in before:
            continue
        if new is PeerState.DOWN or (new is PeerState.UP and old is not PeerState.UP):
            out.append(Transition(peer, old, new))
    return out

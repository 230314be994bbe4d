"""The health of every peer of one device over time: the tracks `desired.health` needs."""

from __future__ import annotations

from collections.abc import Mapping

from wgkube.desired.health import PeerState, Sample, Thresholds, Track, follow, peer_state
from wgkube.diff.model import ObservedPeer
from wgkube.domain.keys import PublicKey


def sample(peer: ObservedPeer) -> Sample:
    return Sample(
        last_handshake=peer.last_handshake,
        rx_bytes=peer.rx_bytes,
        endpoint=str(peer.endpoint) if peer.endpoint else None,
    )


class HealthBook:
    """Fed by every dump of the device (scrapes and the monitor alike); holds no opinion
    of its own: each state is `peer_state` of the dump, the track and the time given."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._tracks: dict[PublicKey, Track] = {}

    def update(
        self, peers: Mapping[PublicKey, ObservedPeer], now: float
    ) -> dict[PublicKey, PeerState]:
        tracks: dict[PublicKey, Track] = {}
        states: dict[PublicKey, PeerState] = {}
        for key, peer in peers.items():
            s = sample(peer)
            track = tracks[key] = follow(self._tracks.get(key), s, now)
            states[key] = peer_state(s, track, now, self.thresholds)
        self._tracks = tracks  # a removed peer's track goes with it
        return states

"""Peer health made visible in Kubernetes: Events on transitions, Node conditions, one
annotation on the hub's Node for `wg-kube status`; a constant number of writes per change.

- The hub posts `Normal PeerConnected` / `Warning PeerDisconnected` on the spoke's Node
  when a peer's state changes (more than `SUMMARY_OVER` at once: one summary Event on
  the hub's own Node instead), keeps the condition `WireGuardHub` on its own Node with
  the peer counts, and the annotation `<prefix>peer-health` with the peers not up.
- The spoke keeps the condition `WireGuardTunnel` on its own Node: written when it
  changes and as a heartbeat every few minutes (the node-problem-detector convention).

Before its first write each reads the condition already on its Node: when the status is
the same, its `lastTransitionTime` stays (a restart is not a transition).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wgkube.desired.health import PeerState, Transition, count, transitions
from wgkube.domain.annotations import Keys
from wgkube.domain.errors import WgKubeError
from wgkube.domain.keys import PublicKey
from wgkube.kube.client import Api
from wgkube.observe.metrics import Metrics, Snapshot

log = logging.getLogger("wgkube.health")

HUB_CONDITION = "WireGuardHub"
SPOKE_CONDITION = "WireGuardTunnel"
CONNECTED = "PeerConnected"
DISCONNECTED = "PeerDisconnected"
SUMMARY_OVER = 5
"""More transitions than this in one look become one summary Event, not one each."""
LISTED_PEERS = 200
"""Peers named in the hub's annotation (only those not up): it stays far below 256 KiB."""
HEALTH_ANNOTATION = "peer-health"


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: object) -> float | None:
    """A condition's RFC 3339 time as seconds since the epoch; None when not one."""
    if not isinstance(text, str):
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def carried_over(prior: Mapping[str, Any] | None, status: str) -> float | None:
    """The transition time to keep from the condition found on the Node at start: its
    own when its status is `status` (nothing changed across the restart), else None."""
    if prior is None or prior.get("status") != status:
        return None
    return parse_timestamp(prior.get("lastTransitionTime"))


async def current_condition(api: Api, node: str, kind: str) -> Mapping[str, Any] | None:
    """The condition of type `kind` on the Node now (None: none, or unreadable)."""
    try:
        body = await api.get_node(node)
    except WgKubeError as exc:
        log.warning("cannot read the %s condition of node %s: %s", kind, node, exc)
        return None
    for cond in body.get("status", {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == kind:
            return cond
    return None


def condition(
    kind: str, status: str, reason: str, message: str, now: float, since: float
) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": timestamp(now),
        "lastTransitionTime": timestamp(since),
    }


def tunnel_condition(
    hub: str | None,
    state: PeerState | None,
    *,
    endpoint: str | None,
    last_handshake: float,
    rx_bytes: int,
    tx_bytes: int,
    now: float,
    since: float,
) -> dict[str, Any]:
    """The spoke's `WireGuardTunnel` condition; state None: no hub (peer) yet."""
    if hub is None or state is None:
        return condition(SPOKE_CONDITION, "False", "NoHub", "no hub known yet", now, since)
    status, reason = {
        PeerState.UP: ("True", "HandshakeFresh"),
        PeerState.DOWN: ("False", "HandshakeStale"),
        PeerState.UNKNOWN: ("Unknown", "NoHandshakeYet"),
    }[state]
    seen = (
        f"last handshake {timestamp(last_handshake)} ({now - last_handshake:.0f}s ago)"
        if last_handshake
        else "no handshake yet"
    )
    message = (
        f"tunnel to hub {hub} ({endpoint or 'no endpoint'}) is {state.value}: {seen}, "
        f"received {rx_bytes} B, sent {tx_bytes} B"
    )
    return condition(SPOKE_CONDITION, status, reason, message, now, since)


def hub_condition(
    counts: Mapping[PeerState, int], rejected: int, *, exists: bool, now: float, since: float
) -> dict[str, Any]:
    if not exists:
        return condition(
            HUB_CONDITION, "False", "InterfaceMissing", "the interface does not exist", now, since
        )
    up, down, unknown = (counts[s] for s in (PeerState.UP, PeerState.DOWN, PeerState.UNKNOWN))
    reason = "PeersDown" if down else "PeersUp"
    message = f"{up + down + unknown} peer(s): {up} up, {down} down, {unknown} unknown"
    message += f"; {rejected} rejected" if rejected else ""
    return condition(HUB_CONDITION, "True", reason, message, now, since)


def health_annotation(
    states: Mapping[str, PeerState],
    handshakes: Mapping[str, float],
    now: float,
    rejected: list[str] | None = None,
) -> str:
    """Counts, the peers that are not up with their last handshake (0 = never), and
    the rejected peer Nodes; each list capped at LISTED_PEERS."""
    counts = count(states.values())
    others = sorted(n for n, s in states.items() if s is not PeerState.UP)
    body: dict[str, Any] = {
        "at": timestamp(now),
        "counts": {s.value: n for s, n in counts.items()},
        "peers": {n: [states[n].value, handshakes.get(n, 0.0)] for n in others[:LISTED_PEERS]},
    }
    if len(others) > LISTED_PEERS:
        body["truncated"] = len(others) - LISTED_PEERS
    if rejected:
        body["rejected"] = sorted(rejected)[:LISTED_PEERS]
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class EventToPost:
    node: str
    type_: str
    reason: str
    message: str


def events_for(changes: list[Transition], hub_node: str, interface: str) -> list[EventToPost]:
    """One Event per change on the peer's Node, or one summary per direction on the hub's."""
    out = []
    for new, type_, reason, verb in (
        (PeerState.UP, "Normal", CONNECTED, "connected"),
        (PeerState.DOWN, "Warning", DISCONNECTED, "disconnected"),
    ):
        group = [c for c in changes if c.new is new]
        if len(changes) > SUMMARY_OVER and group:
            names = ", ".join(c.peer for c in group[:10]) + (" …" if len(group) > 10 else "")
            out.append(
                EventToPost(
                    hub_node,
                    type_,
                    reason.replace("Peer", "Peers", 1),
                    f"{len(group)} peers {verb} on {interface}: {names}",
                )
            )
            continue
        for c in group:
            was = c.old.value if c.old else "new"
            message = f"WireGuard peer {verb} on hub {hub_node} ({interface}; was {was})"
            out.append(EventToPost(c.peer, type_, reason, message))
    return out


def _by_node(snap: Snapshot) -> tuple[dict[str, PeerState], dict[str, float]]:
    states: dict[str, PeerState] = {}
    handshakes: dict[str, float] = {}
    for key, state in snap.states.items():
        name = snap.names.get(key) or key.b64
        states[name] = state
        if snap.peers and key in snap.peers:
            handshakes[name] = snap.peers[key].last_handshake
    return states, handshakes


@dataclass
class HubReporter:
    """Looks at the device every `interval` seconds and writes only what changed."""

    metrics: Metrics
    api: Api
    keys: Keys
    node: str
    uid_of: Callable[[str], str]
    rejected: Callable[[], list[str]]
    """The peer Nodes left out of the device now."""
    interval: float = 10.0
    heartbeat: float = 300.0
    _states: dict[str, PeerState] | None = None
    _written: tuple[Any, ...] | None = None
    _written_at: float = 0.0
    _since: float = field(default_factory=time.time)

    async def run(self) -> None:
        while True:
            try:
                await self.look()
            except WgKubeError as exc:
                log.warning("cannot report peer health: %s", exc)
            await asyncio.sleep(self.interval)

    async def look(self) -> None:
        snap = await self.metrics.dump()
        states, handshakes = _by_node(snap)
        if self._states is not None:
            for event in events_for(
                transitions(self._states, states), self.node, self.metrics.interface
            ):
                log.info("%s: %s: %s", event.node, event.reason, event.message)
                try:
                    await self.api.post_event(
                        {"metadata": {"name": event.node, "uid": self.uid_of(event.node)}},
                        type_=event.type_,
                        reason=event.reason,
                        message=event.message,
                        reporting_instance=self.node,
                    )
                except WgKubeError as exc:  # one lost Event must not repeat the others
                    log.warning("cannot post %s for node %s: %s", event.reason, event.node, exc)
        self._states = states
        counts = count(states.values())
        exists = snap.peers is not None
        not_up = {n: s for n, s in states.items() if s is not PeerState.UP}
        written = (
            exists,
            tuple(sorted(counts.items())),
            tuple(self.rejected()),
            tuple(sorted(not_up.items())),
        )
        if written == self._written and snap.now - self._written_at < self.heartbeat:
            return
        cond = hub_condition(
            counts, len(self.rejected()), exists=exists, now=snap.now, since=self._since
        )
        if self._written is None:
            prior = await current_condition(self.api, self.node, HUB_CONDITION)
            self._since = carried_over(prior, cond["status"]) or snap.now
        elif written[0] != self._written[0]:
            self._since = snap.now
        cond["lastTransitionTime"] = timestamp(self._since)
        await self.api.patch_node(
            self.node,
            {
                "metadata": {
                    "annotations": {
                        self.keys.prefix + HEALTH_ANNOTATION: health_annotation(
                            states, handshakes, snap.now, self.rejected()
                        )
                    }
                }
            },
        )
        await self.api.patch_node_status(self.node, {"status": {"conditions": [cond]}})
        self._written, self._written_at = written, snap.now


@dataclass
class SpokeReporter:
    """Keeps this Node's `WireGuardTunnel` condition: on change, and as a heartbeat."""

    metrics: Metrics
    api: Api
    node: str
    hub: Callable[[], tuple[str, PublicKey] | None]
    interval: float = 10.0
    heartbeat: float = 300.0
    grace: float = 30.0
    """Seconds after start that the first write waits for the agent to know its hub: a
    restart would otherwise write `NoHub` (a false transition) before the announcement is
    read. After that, no hub is what the condition says."""
    _written: tuple[str, str] | None = None
    _written_at: float = 0.0
    _since: float = field(default_factory=time.time)
    _started: float = field(default_factory=time.time)

    async def run(self) -> None:
        while True:
            try:
                await self.look()
            except WgKubeError as exc:
                log.warning("cannot update the %s condition: %s", SPOKE_CONDITION, exc)
            await asyncio.sleep(self.interval)

    async def look(self) -> None:
        snap = await self.metrics.dump()
        hub = self.hub()
        if hub is None and self._written is None and snap.now - self._started < self.grace:
            return
        peer = snap.peers.get(hub[1]) if hub and snap.peers else None
        state = snap.states.get(hub[1]) if hub and peer else None
        cond = tunnel_condition(
            hub[0] if hub else None,
            state,
            endpoint=str(peer.endpoint) if peer and peer.endpoint else None,
            last_handshake=peer.last_handshake if peer else 0.0,
            rx_bytes=peer.rx_bytes if peer else 0,
            tx_bytes=peer.tx_bytes if peer else 0,
            now=snap.now,
            since=self._since,
        )
        key = (cond["status"], cond["reason"])
        if key == self._written and snap.now - self._written_at < self.heartbeat:
            return
        if self._written is None:
            prior = await current_condition(self.api, self.node, SPOKE_CONDITION)
            self._since = carried_over(prior, cond["status"]) or snap.now
        elif key[0] != self._written[0]:
            self._since = snap.now
        cond["lastTransitionTime"] = timestamp(self._since)
        if key != self._written:
            log.info(
                "%s: %s (%s) %s", SPOKE_CONDITION, cond["status"], cond["reason"], cond["message"]
            )
        await self.api.patch_node_status(self.node, {"status": {"conditions": [cond]}})
        self._written, self._written_at = key, snap.now

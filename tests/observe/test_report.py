"""What the hub and spoke write about peer health, and how `wg-kube status` reads it back."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from wgkube.desired.health import PeerState, Transition
from wgkube.domain.annotations import HubRecord, Keys
from wgkube.domain.keys import PrivateKey
from wgkube.domain.net import parse_networks
from wgkube.observe.report import (
    SUMMARY_OVER,
    events_for,
    health_annotation,
    hub_condition,
    timestamp,
    tunnel_condition,
)
from wgkube.observe.status import overlay, render_table

UP, DOWN, UNKNOWN = PeerState.UP, PeerState.DOWN, PeerState.UNKNOWN
NOW = 1_800_000_000.0
KEYS = Keys()


def test_a_few_transitions_become_one_event_each_on_the_peers_node() -> None:
    events = events_for([Transition("a", UP, DOWN), Transition("b", UNKNOWN, UP)], "hub-1", "wg0")
    assert [(e.node, e.type_, e.reason) for e in events] == [
        ("b", "Normal", "PeerConnected"),
        ("a", "Warning", "PeerDisconnected"),
    ]
    assert "hub hub-1" in events[1].message
    assert "was up" in events[1].message


def test_many_transitions_at_once_become_one_summary_per_direction_on_the_hub() -> None:
    changes = [Transition(f"n{i:02}", UP, DOWN) for i in range(SUMMARY_OVER + 20)]
    changes.append(Transition("back", DOWN, UP))
    events = events_for(changes, "hub-1", "wg0")
    assert [(e.node, e.reason) for e in events] == [
        ("hub-1", "PeersConnected"),
        ("hub-1", "PeersDisconnected"),
    ]
    assert events[1].message.startswith(f"{SUMMARY_OVER + 20} peers disconnected")
    assert events[1].message.endswith("…")


def test_the_tunnel_condition_names_the_hub_and_follows_the_state() -> None:
    args: dict[str, Any] = dict(
        endpoint="198.18.0.1:51820", last_handshake=NOW - 3, rx_bytes=10, tx_bytes=20
    )
    up = tunnel_condition("hub-1", UP, now=NOW, since=NOW - 60, **args)
    assert (up["type"], up["status"], up["reason"]) == ("WireGuardTunnel", "True", "HandshakeFresh")
    assert "hub hub-1 (198.18.0.1:51820) is up" in up["message"]
    assert up["lastTransitionTime"] == timestamp(NOW - 60)
    assert up["lastHeartbeatTime"] == timestamp(NOW)
    down = tunnel_condition("hub-1", DOWN, now=NOW, since=NOW, **args)
    assert (down["status"], down["reason"]) == ("False", "HandshakeStale")
    unknown = tunnel_condition("hub-1", UNKNOWN, now=NOW, since=NOW, **args)
    assert unknown["status"] == "Unknown"
    none = tunnel_condition(None, None, now=NOW, since=NOW, **args)
    assert (none["status"], none["reason"]) == ("False", "NoHub")


def test_the_hub_condition_counts_peers() -> None:
    counts = {UP: 3, DOWN: 1, UNKNOWN: 0}
    cond = hub_condition(counts, 2, exists=True, now=NOW, since=NOW)
    assert (cond["type"], cond["status"], cond["reason"]) == ("WireGuardHub", "True", "PeersDown")
    assert cond["message"] == "4 peer(s): 3 up, 1 down, 0 unknown; 2 rejected"
    missing = hub_condition(counts, 0, exists=False, now=NOW, since=NOW)
    assert (missing["status"], missing["reason"]) == ("False", "InterfaceMissing")


def test_the_health_annotation_lists_only_peers_not_up() -> None:
    text = health_annotation(
        {"a": UP, "b": DOWN, "c": UNKNOWN}, {"a": NOW, "b": NOW - 400}, NOW, ["d"]
    )
    body = json.loads(text)
    assert body["counts"] == {"up": 1, "down": 1, "unknown": 1}
    assert body["peers"] == {"b": ["down", NOW - 400], "c": ["unknown", 0.0]}
    assert body["rejected"] == ["d"]


def node(name: str, role: str, **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {f"wireguard.kube/{role}": "true"},
            "annotations": extra.pop("annotations", {}),
        },
        "status": {"conditions": extra.pop("conditions", [])},
    }


def test_status_joins_the_hubs_view_the_spokes_conditions_and_rejection_events() -> None:
    health = health_annotation({"a": UP, "b": DOWN}, {"b": NOW - 400}, NOW, ["c"])
    spoke_a = tunnel_condition(
        "hub-1",
        UP,
        endpoint="198.18.0.1:51820",
        last_handshake=NOW - 3,
        rx_bytes=1234,
        tx_bytes=5678,
        now=NOW,
        since=NOW,
    )
    nodes = [
        node(
            "hub-1",
            "hub",
            annotations={
                "wireguard.kube/peer-health": health,
                "wireguard.kube/allowed-ips": "100.96.0.0/24",
            },
            conditions=[
                hub_condition({UP: 1, DOWN: 1, UNKNOWN: 0}, 1, exists=True, now=NOW, since=NOW)
            ],
        ),
        node(
            "a",
            "peer",
            annotations={"wireguard.kube/allowed-ips": "100.96.0.2/32"},
            conditions=[spoke_a],
        ),
        node("b", "peer"),
        node("c", "peer"),
        {"metadata": {"name": "plain"}},
    ]
    events = [
        {
            "involvedObject": {"name": "c"},
            "reason": "PeerConflict",
            "message": "older",
            "lastTimestamp": "2026-01-01T00:00:00Z",
        },
        {
            "involvedObject": {"name": "c"},
            "reason": "PeerConflict",
            "message": "newest",
            "lastTimestamp": "2026-01-02T00:00:00Z",
        },
    ]
    rows = {r["node"]: r for r in overlay(nodes, events, KEYS)}
    assert list(rows) == ["hub-1", "a", "b", "c"]
    assert rows["hub-1"]["state"] == "ready"
    assert rows["a"]["state"] == "up"
    assert rows["a"]["tunnel"] == "True (HandshakeFresh)"
    assert (rows["a"]["rx_bytes"], rows["a"]["tx_bytes"]) == (1234, 5678)
    assert rows["a"]["last_handshake"] == timestamp(NOW - 3)
    assert rows["b"]["state"] == "down"
    assert rows["b"]["last_handshake"] == timestamp(NOW - 400)
    assert rows["c"]["state"] == "rejected"
    assert rows["c"]["detail"] == "PeerConflict: newest"
    table = render_table(list(rows.values()))
    assert table.splitlines()[0].split() == [
        "NODE",
        "ROLE",
        "ALLOWED-IPS",
        "ENDPOINT",
        "STATE",
        "TUNNEL",
        "LAST-HANDSHAKE",
        "RX",
        "TX",
        "DETAIL",
    ]
    assert len(table.splitlines()) == 5


def test_a_peer_the_hub_has_not_counted_yet_is_unknown_not_up() -> None:
    # The hub's view was written before the peer joined: 0 counted up, none listed.
    health = health_annotation({}, {}, NOW)
    nodes = [
        node("hub-1", "hub", annotations={"wireguard.kube/peer-health": health}),
        node("new", "peer"),
    ]
    rows = {r["node"]: r for r in overlay(nodes, [], KEYS)}
    assert rows["new"]["state"] == "unknown"
    # Once its own condition says the tunnel is up, the spoke's word counts.
    spoke = tunnel_condition(
        "hub-1",
        UP,
        endpoint="198.18.0.1:51820",
        last_handshake=NOW - 3,
        rx_bytes=1,
        tx_bytes=1,
        now=NOW,
        since=NOW,
    )
    nodes[1] = node("new", "peer", conditions=[spoke])
    rows = {r["node"]: r for r in overlay(nodes, [], KEYS)}
    assert rows["new"]["state"] == "up"


def test_every_node_neither_hub_nor_peer_is_a_router_row_with_the_announced_prefixes() -> None:
    hub = HubRecord(
        node="hub-1",
        public_key=PrivateKey.generate().public_key(),
        endpoint=None,
        allowed_ips=parse_networks("100.96.0.0/24,198.18.0.0/24"),
        internal_ip=ipaddress.ip_address("198.18.0.1"),
        router_prefixes=parse_networks("100.96.0.0/24"),
    )
    nodes = [node("hub-1", "hub"), node("a", "peer"), {"metadata": {"name": "plain"}}]
    rows = {r["node"]: r for r in overlay(nodes, [], KEYS, (hub,))}
    assert list(rows) == ["hub-1", "a", "plain"]
    assert rows["plain"]["role"] == "router"
    assert rows["plain"]["allowed_ips"] == "100.96.0.0/24"
    assert rows["plain"]["detail"] == "routes via hub hub-1 (198.18.0.1)"
    # Without routerPrefixes the router routes the hub's allowed-ips.
    plain = hub.model_copy(update={"router_prefixes": None})
    rows = {r["node"]: r for r in overlay(nodes, [], KEYS, (plain,))}
    assert rows["plain"]["allowed_ips"] == "100.96.0.0/24,198.18.0.0/24"
    # A hub that announces no InternalIP gives the routers nothing to route via.
    hidden = hub.model_copy(update={"internal_ip": None})
    rows = {r["node"]: r for r in overlay(nodes, [], KEYS, (hidden,))}
    assert rows["plain"]["detail"] == "hub hub-1 announces no InternalIP: no route"
    assert "router" in render_table(list(rows.values())).splitlines()[-1]

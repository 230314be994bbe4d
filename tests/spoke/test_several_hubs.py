"""A real `wg-kube spoke` with two announced hubs (memory kernel, emulator and real API):
one interface per hub, routes on the active one, and a failover by the handshake backstop
(the memory kernel carries no packets, so the data-path probes cannot run here; they are
tested on wireguard-go in tests/ha/)."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.spoke.conftest import NODE, SpokeHarness
from tests.support.procs import MemoryDevice
from wgkube.testing.apiserver import wait_for

RANGE = "100.96.0.0/24"
ACTIVE = "wireguard.kube/active-hub"


def device(spoke: SpokeHarness, ifname: str) -> MemoryDevice:
    return MemoryDevice(spoke.device.path, ifname)


def handshake(spoke: SpokeHarness, ifname: str, key: str, age: float) -> None:
    """The hub on `ifname` last completed a handshake `age` seconds ago."""

    def change(dev: dict[str, Any]) -> None:
        dev["peers"][key]["last_handshake"] = time.time() - age

    device(spoke, ifname).edit(change)


def hub_events(spoke: SpokeHarness) -> list[dict[str, Any]]:
    return [
        e
        for e in spoke.api.list("events", namespace="default")
        if e.get("involvedObject", {}).get("name") == NODE
        and str(e.get("reason", "")).startswith("Hub")
    ]


def test_two_hubs_get_one_interface_each_with_the_range_and_routes_only_on_the_preferred(
    spoke: SpokeHarness,
) -> None:
    a = spoke.create_hub("hub-a", allowed=RANGE)
    b = spoke.create_hub("hub-b", endpoint="203.0.113.2:51820", allowed=RANGE)
    proc = spoke.start()
    spoke.wait_hub_peer(a)
    second = device(spoke, "wg0-1")
    wait_for(lambda: set(second.peers()) == {b}, timeout=15, message="hub-b on wg0-1")
    assert spoke.device.peers()[a]["allowed_ips"] == [RANGE]
    assert second.peers()[b]["allowed_ips"] == [RANGE]
    wait_for(lambda: spoke.device.routes() == {RANGE}, timeout=15, message="the route on wg0")
    assert second.routes() == set()
    # Each device has the spoke's address and a port of its own.
    first_dev, second_dev = spoke.device.device() or {}, second.device() or {}
    assert first_dev["addresses"] == second_dev["addresses"] == ["100.96.0.2/32"]
    assert second_dev["listen_port"] == first_dev["listen_port"] + 1
    proc.wait_log("traffic goes through hub hub-a")


def test_the_active_hub_going_silent_moves_the_route_once_with_an_event_and_keeps_both_peers(
    spoke: SpokeHarness,
) -> None:
    a = spoke.create_hub("hub-a", allowed=RANGE)
    b = spoke.create_hub("hub-b", endpoint="203.0.113.2:51820", allowed=RANGE)
    proc = spoke.start()
    spoke.wait_hub_peer(a)
    wait_for(lambda: spoke.device.routes() == {RANGE}, timeout=15, message="the route on wg0")
    second = device(spoke, "wg0-1")
    wait_for(lambda: set(second.peers()) == {b}, timeout=15, message="hub-b on wg0-1")
    proc.wait_log("traffic goes through hub hub-a")
    writes = spoke.device.writes

    # The memory kernel carries no probes: the handshake backstop judges. A fresh handshake
    # (seen at the agent's next look, every second) first, then one 1000 s old.
    handshake(spoke, "wg0", a, 0)
    handshake(spoke, "wg0-1", b, 0)
    time.sleep(1.5)
    handshake(spoke, "wg0", a, 1000)
    wait_for(lambda: second.routes() == {RANGE}, timeout=15, message="the route moves to wg0-1")
    assert spoke.device.routes() == set()
    proc.wait_log("traffic moved from hub hub-a to hub hub-b: hub hub-a is down")
    events = wait_for(lambda: hub_events(spoke) or None, timeout=15, message="a HubFailover Event")
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "HubFailover")]
    # Both tunnels stay; the move was a route replace (one write), not a device rebuild.
    assert set(spoke.device.peers()) == {a}
    assert set(second.peers()) == {b}
    time.sleep(1.5)
    assert spoke.device.writes == writes + 1, json.dumps(spoke.device.state())[:2000]
    assert len(hub_events(spoke)) == 1
    # ... and the Node says where its traffic goes now (wg-kube status shows it).
    wait_for(
        lambda: spoke.node()["metadata"].get("annotations", {}).get(ACTIVE) == "hub-b",
        timeout=15,
        message="the active-hub annotation",
    )

"""The spoke's WireGuardTunnel condition (a real `wg-kube spoke`, memory kernel, both
APIs): a restart that changes nothing keeps its lastTransitionTime; with several hubs it
and the hub metrics describe the active hub's tunnel (its own interface), not the
configured interface's hub, and follow the traffic after a failover."""

from __future__ import annotations

import socket
import time
import urllib.request
from typing import Any

from tests.spoke.conftest import NODE, SpokeHarness
from tests.spoke.test_several_hubs import RANGE, device, handshake
from wgkube.testing.apiserver import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tunnel(spoke: SpokeHarness) -> dict[str, Any] | None:
    for cond in spoke.node(NODE).get("status", {}).get("conditions") or []:
        if cond.get("type") == "WireGuardTunnel":
            return dict(cond)
    return None


def test_a_restart_keeps_the_transition_time_and_a_real_change_moves_it(
    spoke: SpokeHarness,
) -> None:
    a = spoke.create_hub("hub-a", allowed=RANGE)
    env = {"WG_HEALTH_INTERVAL": "0.5"}
    proc = spoke.start(**env)
    spoke.wait_hub_peer(a)
    handshake(spoke, "wg0", a, 0)
    first = wait_for(
        lambda: (c := tunnel(spoke)) and c["status"] == "True" and c,
        timeout=15,
        message="the condition True",
    )
    proc.stop()

    def next_write(after: dict[str, Any]) -> dict[str, Any]:
        cond: dict[str, Any] = wait_for(
            lambda: (
                (c := tunnel(spoke)) and c["lastHeartbeatTime"] != after["lastHeartbeatTime"] and c
            ),
            timeout=15,
            message="the restarted spoke's first write",
        )
        return cond

    time.sleep(1.2)  # the timestamps have a resolution of one second
    handshake(spoke, "wg0", a, 0)  # still fresh: nothing changed across the restart
    proc = spoke.start(**env)
    again = next_write(first)
    assert again["status"] == "True"
    assert again["lastTransitionTime"] == first["lastTransitionTime"]
    proc.stop()

    time.sleep(1.2)
    handshake(spoke, "wg0", a, 1000)  # stale now: the restarted spoke sees a transition
    spoke.start(**env)
    changed = next_write(again)
    assert changed["status"] == "False"
    assert changed["lastTransitionTime"] > first["lastTransitionTime"]


def hub_state_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [ln for ln in text.splitlines() if ln.startswith("wgkube_hub_state{")]


def test_after_a_failover_the_condition_and_the_hub_metrics_describe_the_active_hub(
    spoke: SpokeHarness,
) -> None:
    a = spoke.create_hub("hub-a", allowed=RANGE)
    b = spoke.create_hub("hub-b", endpoint="203.0.113.2:51820", allowed=RANGE)
    port = free_port()
    proc = spoke.start(WG_HEALTH_INTERVAL="0.5", WG_METRICS_ADDRESS=f"127.0.0.1:{port}")
    spoke.wait_hub_peer(a)
    second = device(spoke, "wg0-1")
    wait_for(lambda: set(second.peers()) == {b}, timeout=15, message="hub-b on wg0-1")
    proc.wait_log("traffic goes through hub hub-a")
    handshake(spoke, "wg0", a, 0)
    handshake(spoke, "wg0-1", b, 0)

    def names(hub: str) -> dict[str, Any] | None:
        cond = tunnel(spoke)
        return cond if cond and f"tunnel to hub {hub} " in str(cond.get("message")) else None

    wait_for(lambda: names("hub-a"), timeout=15, message="the condition names hub-a")
    assert all('hub="hub-a"' in ln and 'interface="wg0"' in ln for ln in hub_state_lines(port))

    time.sleep(1.5)
    handshake(spoke, "wg0", a, 1000)  # hub-a goes silent: traffic moves to hub-b on wg0-1
    proc.wait_log("traffic moved from hub hub-a to hub hub-b")
    cond = wait_for(lambda: names("hub-b"), timeout=15, message="the condition names hub-b")
    assert "(203.0.113.2:51820)" in cond["message"]
    # hub-b's handshake is fresh: the tunnel traffic uses is not the stale one on wg0.
    fresh = wait_for(
        lambda: (c := names("hub-b")) and c["status"] == "True" and c,
        timeout=30,
        message="the condition True for hub-b",
    )
    assert fresh["reason"] == "HandshakeFresh"
    lines = hub_state_lines(port)
    assert lines, "no wgkube_hub_state series"
    assert all('hub="hub-b"' in ln and 'interface="wg0-1"' in ln for ln in lines), lines
    assert any('state="up"' in ln and ln.endswith(" 1.0") for ln in lines), lines

"""The hub's WireGuardHub condition on its own Node: right after the first reconcile (not
an interval later), and a restart that changes nothing keeps its lastTransitionTime."""

from __future__ import annotations

import time
from typing import Any

from tests.operator.conftest import HUB, HubHarness
from wgkube.testing.apiserver import wait_for

LONG = ("--health-interval", "60")
"""No second look within a test: what is seen is the first write after a start."""


def hub_condition(hub: HubHarness) -> dict[str, Any] | None:
    for cond in (hub.api.get("nodes", HUB) or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == "WireGuardHub":
            return dict(cond)
    return None


def test_the_first_condition_follows_the_first_reconcile_and_survives_a_restart(
    hub: HubHarness,
) -> None:
    hub.create_peer("bad", "not-a-key", allowed="100.96.0.9/32")
    proc = hub.start(*LONG)
    cond = wait_for(lambda: hub_condition(hub), timeout=15, message="a WireGuardHub condition")
    # Written after the first reconcile: the interface exists, the rejection is counted.
    assert (cond["status"], cond["reason"]) == ("True", "PeersUp"), cond
    assert cond["message"].endswith("; 1 rejected"), cond
    proc.stop()

    time.sleep(1.2)  # the timestamps have a resolution of one second
    hub.start(*LONG)
    again = wait_for(
        lambda: (
            (c := hub_condition(hub)) and c["lastHeartbeatTime"] != cond["lastHeartbeatTime"] and c
        ),
        timeout=15,
        message="the restarted hub's first write",
    )
    assert again["status"] == "True"
    assert again["lastTransitionTime"] == cond["lastTransitionTime"]

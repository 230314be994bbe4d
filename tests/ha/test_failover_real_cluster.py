"""Two hubs and two spokes on a real kube-apiserver with their production identities (the
hubs as the ServiceAccount, the spokes as `system:node:<name>`, bound only by manifests/),
over wireguard-go: the spokes follow both hubs from the announcement, fail over when the
active hub stops forwarding, and each posts a HubFailover Event on its own Node."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import failover
from tests.support.controlplane import require_control_plane
from wgkube.domain.announcement import NAME, NAMESPACE, decode
from wgkube.testing.apiserver import RealApiServer
from wgkube.testing.controlplane import ControlPlane, node_user
from wgkube.testing.lab import UNDERLAY
from wgkube.testing.netns import can_make_namespaces

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "wireguard.kube/"
HOLD_DOWN = 3.0

pytestmark = [pytest.mark.userspace, pytest.mark.realapi, pytest.mark.slow]


def failover_events(
    admin: RealApiServer, node: str, reason: str = "HubFailover"
) -> list[dict[str, Any]]:
    return [
        e
        for e in admin.list("events", namespace="default")
        if e.get("involvedObject", {}).get("name") == node and e.get("reason") == reason
    ]


async def test_spokes_with_the_kubelets_identity_fail_over_and_report_it_on_their_own_node(
    tmp_path: Path,
) -> None:
    reason = can_make_namespaces()
    if reason is None and shutil.which("wireguard-go") is None:
        reason = "wireguard-go is not installed"
    if reason is not None:
        pytest.skip(reason)
    require_control_plane()
    lab = failover.make_lab(tmp_path / "lab", hold_down=HOLD_DOWN)
    try:
        lab.make_bridge()
        with ControlPlane(host=f"{UNDERLAY}.254") as plane:
            applied = plane.kubectl("apply", "-f", str(ROOT / "manifests"))
            assert applied.returncode == 0, applied.stderr
            admin = RealApiServer(plane.kubeconfig)
            identities = {h: plane.hub_kubeconfig for h in ("hub-a", "hub-b")}
            identities |= {s: plane.kubeconfig_for(node_user(s)) for s in ("spoke-1", "spoke-2")}
            lab.use_api(admin, identities)

            def mark_hub(name: str) -> None:
                admin.patch_node(name, {"metadata": {"labels": {PREFIX + "hub": "true"}}})

            ha = await failover.populate(lab, mark_hub=mark_hub)
            config_map = admin.get("configmaps", NAME, namespace=NAMESPACE)
            assert config_map is not None
            assert [h.node for h in decode(config_map["data"])] == ["hub-a", "hub-b"]

            forwarding_off = next(f for f in failover.FAULTS if "forwarding" in f.name)
            record = await failover.one_fault(ha, forwarding_off, hold_down=HOLD_DOWN)
            assert record["hubs_during_fault"] == ["hub-b", "hub-b"], record
            assert record["route_changes_per_spoke"] == [1, 1], record
            assert record["worst_s"] <= failover.TARGET_WORST_S, record

            async def reported() -> bool:
                return all(
                    failover_events(admin, s.name) and failover_events(admin, s.name, "HubFailback")
                    for s in ha.spokes
                )

            await failover.until("Failover and failback Events on each spoke", reported, 20)
            for spoke in ha.spokes:
                (event,) = failover_events(admin, spoke.name)
                assert event["type"] == "Warning"
                assert "from hub hub-a to hub hub-b" in event["message"]
                back = failover_events(admin, spoke.name, "HubFailback")
                assert {e["type"] for e in back} == {"Normal"}
                assert any("from hub hub-b to hub hub-a" in e["message"] for e in back)
            await lab.close_kernels()
            lab.clean()
    finally:
        await lab.close_kernels()
        lab.clean()

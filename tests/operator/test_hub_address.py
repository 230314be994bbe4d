"""A hub takes its own overlay address and priority from its own Node (annotations an
administrator sets), so one DaemonSet with one WG_ADDRESS serves several hubs; a bad
value is one start-up line. Real `wg-kube hub` processes (memory kernel), both APIs; on
the real kube-apiserver with the hub's ServiceAccount bound only by manifests/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.operator.conftest import HUB, PREFIX, HubHarness, ensure_namespace
from tests.operator.test_rbac import SERVICE_ACCOUNT
from tests.support.procs import MemoryDevice
from wgkube.domain.announcement import NAME, NAMESPACE, decode
from wgkube.testing.apiserver import wait_for
from wgkube.testing.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
SAME = ("--allowed-ips", "100.96.0.0/24")
"""What both hubs are started with: the DaemonSet's settings, one WG_ADDRESS for all."""


def identity(hub: HubHarness, request: pytest.FixtureRequest) -> Path | None:
    """The hub's production identity on the real kube-apiserver (None: the emulator's admin)."""
    if hub.api.controls is not None:
        return None
    plane: ControlPlane = request.getfixturevalue("real_api_server")
    for manifest in ("00-namespace.yaml", "10-rbac.yaml"):
        applied = plane.kubectl("apply", "-f", str(ROOT / "manifests" / manifest))
        assert applied.returncode == 0, applied.stderr
    return plane.kubeconfig_for(SERVICE_ACCOUNT)


def annotate(hub: HubHarness, node: str, **values: str) -> None:
    notes = {PREFIX + key.replace("_", "-"): value for key, value in values.items()}
    hub.api.patch_node(node, {"metadata": {"annotations": notes}})


def test_two_hubs_started_from_the_same_settings_take_their_own_nodes_addresses(
    hub: HubHarness, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kubeconfig = identity(hub, request)
    hub.api.create_node("hub-2", addresses={"InternalIP": "10.0.0.2", "ExternalIP": "203.0.113.2"})
    annotate(hub, HUB, hub_address="100.96.0.1/32", hub_priority="10")
    annotate(hub, "hub-2", hub_address="100.96.0.2/32")
    (tmp_path / "second").mkdir()
    second = HubHarness(hub.api, tmp_path / "second", MemoryDevice(tmp_path / "second" / "k.json"))
    try:
        first_proc = hub.start(*SAME, kubeconfig=kubeconfig)
        second_proc = second.start(*SAME, node="hub-2", kubeconfig=kubeconfig)
        for harness, address in ((hub, "100.96.0.1/32"), (second, "100.96.0.2/32")):

            def on(h: HubHarness = harness, a: str = address) -> bool:
                return (h.device.device() or {}).get("addresses") == [a]

            wait_for(on, timeout=15, message=f"the device on {address}")

        def announced() -> dict[str, tuple[list[str], int]] | None:
            config_map = hub.api.get("configmaps", NAME, namespace=NAMESPACE)
            if config_map is None:
                return None
            hubs = decode(config_map.get("data"))
            found = {h.node: ([str(a) for a in h.addresses], h.priority) for h in hubs}
            return found if len(found) == 2 else None

        assert wait_for(announced, timeout=15, message="both hubs announced") == {
            HUB: (["100.96.0.1/32"], 10),
            "hub-2": (["100.96.0.2/32"], 0),
        }
        first_proc.wait_log("overlay address 100.96.0.1/32, priority 10 (its annotations)")
        for proc in (first_proc, second_proc):
            assert "API error 403" not in proc.log
            assert "forbidden" not in proc.log.lower()
    finally:
        second.stop_all()


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        (
            "hub-address",
            "100.96.0.300/32",
            "annotation wireguard.kube/hub-address='100.96.0.300/32'",
        ),
        ("hub-priority", "high", "give an integer from -1000 to 1000"),
    ],
)
def test_a_bad_hub_annotation_is_one_start_up_line_and_touches_no_device(
    hub: HubHarness, key: str, value: str, said: str
) -> None:
    ensure_namespace(hub.api)
    hub.api.patch_node(HUB, {"metadata": {"annotations": {PREFIX + key: value}}})
    proc = hub.start(*SAME, wait_ready=False)
    assert proc.exit_code() == 1
    lines = [ln for ln in proc.log.splitlines() if ln.startswith("wg-kube hub:")]
    assert len(lines) == 1, proc.log
    assert said in lines[0]
    assert f"kubectl annotate node {HUB} {PREFIX}{key}=... --overwrite" in lines[0]
    assert "Traceback" not in proc.log
    assert hub.device.device() is None

"""A 403 is a permission problem, not an outage: the hub and the spoke say what was refused
and which manifest grants it, keep retrying slowly, show it in readiness (/readyz,
STATUS=), and recover once the grant is applied. On a fresh real kube-apiserver."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator.conftest import HubHarness
from tests.spoke.conftest import SpokeHarness
from tests.support.controlplane import require_control_plane
from tests.support.procs import MemoryDevice
from wgkube.testing.apiserver import RealApiServer, wait_for
from wgkube.testing.controlplane import ControlPlane, node_user

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"

pytestmark = pytest.mark.realapi


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    require_control_plane()
    with ControlPlane() as control_plane:
        yield control_plane


def apply(plane: ControlPlane, docs: list[dict[str, Any]]) -> None:
    result = subprocess.run(
        [str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", "apply", "-f", "-"],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def rbac(without: str | None = None) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((MANIFESTS / "10-rbac.yaml").read_text()) if d]
    return [d for d in docs if d["metadata"]["name"] != without]


def namespace() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / "00-namespace.yaml").read_text()) if d]


def test_the_hub_reports_a_missing_grant_in_readyz_and_recovers_when_it_is_applied(
    plane: ControlPlane, tmp_path: Path
) -> None:
    apply(plane, namespace() + rbac(without="wg-kube-hub-announcement"))
    api = RealApiServer(plane.kubeconfig)
    api.create_node("hub-1", addresses={"InternalIP": "10.0.0.1", "ExternalIP": "203.0.113.1"})
    hub = HubHarness(api, tmp_path, MemoryDevice(tmp_path / "kernel.json"))
    try:
        proc = hub.start(kubeconfig=plane.hub_kubeconfig)
        answer = wait_for(
            lambda: (r := hub.readiness())["problems"] and r, message="a problem in /readyz"
        )
        assert answer["ready"] is False
        (problem,) = answer["problems"]
        assert "permission denied to watch ConfigMap wg-kube/wg-kube-hub" in problem
        assert "Role wg-kube-hub-announcement" in problem
        assert "manifests/10-rbac.yaml" in problem
        assert "unreachable" not in proc.log
        assert "unavailable" not in proc.log
        apply(plane, rbac())
        wait_for(lambda: hub.readiness()["ready"], timeout=60, message="ready once granted")
        assert api.get("configmaps", "wg-kube-hub", namespace="wg-kube") is not None
    finally:
        hub.stop_all()


def test_the_spoke_reports_a_missing_grant_in_its_status_and_recovers_when_it_is_applied(
    plane: ControlPlane, tmp_path: Path
) -> None:
    apply(plane, namespace() + rbac(without="wg-kube-hub-readers"))
    api = RealApiServer(plane.kubeconfig, kubeconfig_for=plane.kubeconfig_for)
    api.create_node("spoke-1", addresses={"InternalIP": "10.0.0.2"})
    spoke = SpokeHarness(api, tmp_path, MemoryDevice(tmp_path / "kernel.json"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30.0)
    try:
        proc = spoke.start(
            KUBECONFIG=str(plane.kubeconfig_for(node_user("spoke-1"))),
            NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        )

        def next_status(prefix: str) -> str:
            while not (message := sock.recv(4096).decode()).startswith(prefix):
                pass
            return message

        denied = next_status("STATUS=permission denied")
        assert denied == "STATUS=permission denied to watch ConfigMap wg-kube/wg-kube-hub"
        proc.wait_log("Role wg-kube-hub-readers in manifests/10-rbac.yaml")
        assert "API server unavailable" not in proc.log
        apply(plane, rbac())
        assert "ConfigMap wg-kube/wg-kube-hub" in next_status("STATUS=waiting for the hub")
    finally:
        sock.close()
        spoke.stop_all()

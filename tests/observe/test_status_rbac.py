"""`wg-kube status` runs with only the read-only ClusterRole it ships, against a real
kube-apiserver (RBAC enforced), and a user without it is refused."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from wgkube.testing.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
VIEWER = ROOT / "manifests" / "monitoring" / "status-viewer.yaml"

pytestmark = pytest.mark.realapi


def status(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgkube", "status", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def bind_viewer(plane: ControlPlane) -> str:
    """Apply the shipped viewer role and bind a new user to it alone; the user's name."""
    applied = plane.kubectl("apply", "-f", str(VIEWER))
    assert applied.returncode == 0, applied.stderr
    user = f"viewer-{uuid.uuid4().hex[:6]}"
    bound = plane.kubectl(
        "create",
        "clusterrolebinding",
        user,
        "--clusterrole=wg-kube-status-viewer",
        f"--user={user}",
    )
    assert bound.returncode == 0, bound.stderr
    return user


def test_status_works_with_the_viewer_role_alone_and_is_refused_without(
    real_api_server: ControlPlane,
) -> None:
    plane = real_api_server
    user = bind_viewer(plane)
    ok = status(plane.kubeconfig_for(user, groups=()), "-o", "json")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith("[")
    refused = status(plane.kubeconfig_for(f"nobody-{user}", groups=()))
    assert refused.returncode == 1
    assert "403" in refused.stderr


def test_the_viewer_role_reads_the_hub_announcement_by_name_and_no_other_config_map(
    real_api_server: ControlPlane,
) -> None:
    plane = real_api_server
    user = bind_viewer(plane)

    def can(*what: str) -> str:
        return plane.kubectl("auth", "can-i", *what, "--as", user).stdout.strip()

    assert can("get", "configmap/wg-kube-hub", "-n", "wg-kube") == "yes"
    assert can("get", "configmap/other", "-n", "wg-kube") == "no"
    assert can("list", "configmaps", "-n", "wg-kube") == "no"

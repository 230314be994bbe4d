"""The real control plane (etcd + kube-apiserver built from upstream) and NodeRestriction.

These pin down the behaviour the emulator must reproduce: what a spoke
authenticated as `system:node:<name>` may do to Node objects under
`--authorization-mode=Node,RBAC` and the NodeRestriction admission plugin.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from wgkube.kube.client import Api, KubeApiError, load_configuration
from wgkube.testing.controlplane import ControlPlane, missing_binaries, node_user

PEER_LABEL = "wireguard.kube/peer"


async def ensure_node(cp: ControlPlane, name: str) -> None:
    """Create the Node as admin (there is no kubelet to register it); reset its labels."""
    async with client.ApiClient(await load_configuration(cp.kubeconfig)) as api_client:
        try:
            node = client.V1Node(metadata=client.V1ObjectMeta(name=name))
            await client.CoreV1Api(api_client).create_node(node)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await Api(api_client).patch_node(name, {"metadata": {"labels": {PEER_LABEL: None}}})


def test_versions_are_stamped(real_api_server: ControlPlane) -> None:
    result = real_api_server.kubectl("version", "-o", "json")
    assert result.returncode == 0, result.stderr
    versions = json.loads(result.stdout)
    assert versions["clientVersion"]["gitVersion"] == "v1.37.2"
    assert versions["serverVersion"]["gitVersion"] == "v1.37.2"
    assert versions["serverVersion"]["minor"] == "37"
    etcd = subprocess.run(
        [str(real_api_server.bin_dir / "etcd"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "etcd Version: 3.7.0" in etcd.stdout


async def test_spoke_patches_its_own_node(real_api_server: ControlPlane) -> None:
    await ensure_node(real_api_server, "spoke-a")
    async with await Api.connect(real_api_server.kubeconfig_for(node_user("spoke-a"))) as api:
        node = await api.patch_node(
            "spoke-a",
            {
                "metadata": {
                    "labels": {PEER_LABEL: "true"},
                    "annotations": {"wireguard.kube/public-key": "x" * 44},
                }
            },
        )
        assert node["metadata"]["labels"][PEER_LABEL] == "true"
        assert node["metadata"]["annotations"]["wireguard.kube/public-key"] == "x" * 44
        node = await api.patch_node("spoke-a", {"metadata": {"labels": {PEER_LABEL: None}}})
        assert PEER_LABEL not in node["metadata"].get("labels", {})


async def test_spoke_cannot_patch_another_node(real_api_server: ControlPlane) -> None:
    await ensure_node(real_api_server, "spoke-a")
    await ensure_node(real_api_server, "spoke-b")
    async with await Api.connect(real_api_server.kubeconfig_for(node_user("spoke-a"))) as api:
        with pytest.raises(KubeApiError) as excinfo:
            await api.patch_node("spoke-b", {"metadata": {"labels": {PEER_LABEL: "true"}}})
    assert excinfo.value.status == 403
    assert 'node "spoke-a" is not allowed to modify node "spoke-b"' in str(excinfo.value)


async def test_spoke_cannot_set_node_restriction_labels(real_api_server: ControlPlane) -> None:
    await ensure_node(real_api_server, "spoke-a")
    async with await Api.connect(real_api_server.kubeconfig_for(node_user("spoke-a"))) as api:
        with pytest.raises(KubeApiError) as excinfo:
            await api.patch_node(
                "spoke-a", {"metadata": {"labels": {"node-restriction.kubernetes.io/x": "y"}}}
            )
    assert excinfo.value.status == 403
    assert "is not allowed to modify labels: node-restriction.kubernetes.io/x" in str(excinfo.value)


async def test_certificate_identity_for_undeclared_node(real_api_server: ControlPlane) -> None:
    """Nodes not given static tokens authenticate with a minted client certificate."""
    await ensure_node(real_api_server, "spoke-z")
    async with await Api.connect(real_api_server.kubeconfig_for(node_user("spoke-z"))) as api:
        node = await api.patch_node("spoke-z", {"metadata": {"labels": {PEER_LABEL: "true"}}})
        assert node["metadata"]["labels"][PEER_LABEL] == "true"
        with pytest.raises(KubeApiError) as excinfo:
            await api.patch_node("spoke-a", {"metadata": {"labels": {PEER_LABEL: "true"}}})
        assert excinfo.value.status == 403


async def test_rbac_denies_unbound_users(real_api_server: ControlPlane) -> None:
    async with await Api.connect(real_api_server.kubeconfig_for("rbac-probe")) as api:
        with pytest.raises(KubeApiError) as excinfo:
            await api.list_nodes()
    assert excinfo.value.status == 403


def test_kubectl_whoami(real_api_server: ControlPlane) -> None:
    result = real_api_server.kubectl("auth", "whoami", "-o", "json", user=node_user("spoke-b"))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)["status"]["userInfo"]
    assert info["username"] == "system:node:spoke-b"
    assert "system:nodes" in info["groups"]


@pytest.mark.slow
def test_lifecycle_cleans_up(tmp_path: Path) -> None:
    reason = missing_binaries()
    if reason is not None:
        pytest.skip(reason)
    with ControlPlane() as cp:
        procs = list(cp._procs)
        workdir = cp.dir
        assert cp.running
        assert cp.startup_seconds["total"] < 60
        assert cp.kubectl("get", "--raw", "/readyz").stdout == "ok"
    assert all(p.returncode is not None for p in procs)
    assert not workdir.exists()
    assert not cp.running

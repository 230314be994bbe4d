"""kubectl (the Debian one on this machine) against the emulator."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from wgkube.testing import ApiServer, EmulatorControls
from wgkube.testing.controlplane import kubectl_binary

KUBECTL = kubectl_binary()
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


def kubectl(env: dict[str, str], *args: str, check: bool = True) -> str:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def node(api_server: ApiServer, name: str) -> dict[str, Any]:
    found = api_server.get("nodes", name)
    assert found is not None
    return found


def test_get_label_annotate_patch_delete(api_server: ApiServer, kube_env: dict[str, str]) -> None:
    api_server.create_node("hub", labels={"wireguard.kube/peer": "true"})
    api_server.create_node("spoke-1")
    out = kubectl(kube_env, "get", "nodes", "-o", "name")
    assert out.split() == ["node/hub", "node/spoke-1"]
    out = kubectl(kube_env, "get", "nodes", "-l", "wireguard.kube/peer=true", "-o", "name")
    assert out.split() == ["node/hub"]
    assert "hub" in kubectl(kube_env, "get", "nodes")  # the default (table) output

    kubectl(kube_env, "label", "node", "spoke-1", "wireguard.kube/peer=true")
    kubectl(kube_env, "annotate", "node", "spoke-1", "note=hello")
    assert node(api_server, "spoke-1")["metadata"]["labels"] == {"wireguard.kube/peer": "true"}
    assert node(api_server, "spoke-1")["metadata"]["annotations"] == {"note": "hello"}

    kubectl(
        kube_env,
        "patch",
        "node",
        "hub",
        "--type",
        "merge",
        "-p",
        '{"metadata":{"labels":{"m":"1"}}}',
    )
    kubectl(
        kube_env,
        "patch",
        "node",
        "hub",
        "--type",
        "json",
        "-p",
        '[{"op":"add","path":"/metadata/labels/j","value":"2"}]',
    )
    kubectl(
        kube_env,
        "patch",
        "node",
        "hub",
        "--type",
        "strategic",
        "-p",
        '{"metadata":{"labels":{"s":"3"}}}',
    )
    labels = node(api_server, "hub")["metadata"]["labels"]
    assert labels == {"wireguard.kube/peer": "true", "m": "1", "j": "2", "s": "3"}

    fetched = json.loads(kubectl(kube_env, "get", "node", "hub", "-o", "json"))
    assert fetched["kind"] == "Node"
    assert fetched["metadata"]["uid"] == node(api_server, "hub")["metadata"]["uid"]

    kubectl(kube_env, "delete", "node", "hub")
    assert api_server.get("nodes", "hub") is None
    assert kubectl(kube_env, "get", "nodes", "-o", "name").split() == ["node/spoke-1"]


def test_get_watch_streams_changes(
    api_server: ApiServer, emulator: EmulatorControls, kube_env: dict[str, str]
) -> None:
    assert KUBECTL is not None
    api_server.create_node("hub")
    with subprocess.Popen(
        [KUBECTL, "get", "nodes", "-w", "-o", "name", "--request-timeout=20s"],
        env=kube_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "node/hub"  # the initial listing
            deadline = time.monotonic() + 20
            created = False
            while time.monotonic() < deadline and not created:
                # Create only once the watch request is open, to see it come through the watch.
                if any(r.verb == "watch" for r in emulator.requests):
                    api_server.create_node("spoke-1")
                    created = True
                else:
                    time.sleep(0.05)
            assert created
            assert proc.stdout.readline().strip() == "node/spoke-1"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_apply_namespace_and_manifests(
    api_server: ApiServer, kube_env: dict[str, str], tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.json"
    docs = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "wg-kube"}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "operator", "namespace": "wg-kube"},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": "wg-kube"},
                "data": {"port": "51820"},
            },
        ],
    }
    manifest.write_text(json.dumps(docs))
    out = kubectl(kube_env, "apply", "--validate=false", "-f", str(manifest))
    assert "namespace/wg-kube created" in out
    assert "configmap/settings created" in out
    again = kubectl(kube_env, "apply", "--validate=false", "-f", str(manifest))
    assert "namespace/wg-kube unchanged" in again
    configmap = api_server.get("configmaps", "settings", namespace="wg-kube")
    assert configmap is not None
    assert configmap["data"] == {"port": "51820"}
    names = kubectl(kube_env, "get", "namespaces", "-o", "name").split()
    assert "namespace/wg-kube" in names

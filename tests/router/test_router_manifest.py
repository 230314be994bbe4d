"""manifests/40-router.yaml: every ordinary node, host network, NET_ADMIN only, and an
identity that may read the one announcement ConfigMap and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from wgkube.domain import announcement
from wgkube.router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifests" / "40-router.yaml"


def objects() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_the_router_runs_on_every_node_that_is_neither_hub_nor_peer() -> None:
    spec = objects()["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert "nodeSelector" not in spec
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term == {
        "matchExpressions": [
            {"key": "wireguard.kube/hub", "operator": "DoesNotExist"},
            {"key": "wireguard.kube/peer", "operator": "DoesNotExist"},
        ]
    }
    assert spec["tolerations"] == [{"operator": "Exists"}]


def test_the_router_container_has_only_net_admin_and_probes_its_own_port() -> None:
    spec = objects()["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["router"]
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    address = env["WG_PROBE_ADDRESS"]["value"]
    assert address == RouterSettings.model_fields["probe_address"].default
    port = int(address.rpartition(":")[2])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"host": "127.0.0.1", "path": path, "port": port}
    # No hostPath: the router keeps no state; its routes are its state, in the kernel.
    assert all("hostPath" not in v for v in spec["volumes"])


def test_the_routers_identity_may_only_read_the_announcement_by_name() -> None:
    found = objects()
    account = found["ServiceAccount"]["metadata"]
    pod = found["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"] == "wg-kube-router"
    assert account["namespace"] == announcement.NAMESPACE
    role = found["Role"]
    assert role["metadata"]["namespace"] == announcement.NAMESPACE
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [announcement.NAME],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = found["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "wg-kube-router", "namespace": "wg-kube"}
    ]

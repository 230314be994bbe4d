"""manifests/10-rbac.yaml is least privilege, proven from every request the operator makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.operator.conftest import PREFIX, HubHarness, new_key
from wgkube.domain.announcement import DATA_KEY, NAME, NAMESPACE, decode
from wgkube.testing.apiserver import EmulatorControls, RequestRecord, wait_for
from wgkube.testing.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
SERVICE_ACCOUNT = "system:serviceaccount:wg-kube:wg-kube"


Grant = tuple[str, str, str, str]
"""(namespace or "*" for cluster-wide, apiGroup, resource[/subresource], verb)."""


def granted() -> set[Grant]:
    """What 10-rbac.yaml gives the ServiceAccount, through each binding that names it."""
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "10-rbac.yaml").read_text()) if d]
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    out: set[Grant] = set()
    for binding in docs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        subjects = {
            f"system:serviceaccount:{s['namespace']}:{s['name']}"
            for s in binding["subjects"]
            if s["kind"] == "ServiceAccount"
        }
        if SERVICE_ACCOUNT not in subjects:
            continue
        scope = binding["metadata"].get("namespace") or "*"
        ref = binding["roleRef"]
        role = roles[(ref["kind"], None if ref["kind"] == "ClusterRole" else scope, ref["name"])]
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule[field], f"wildcard in {role['metadata']['name']}: {rule}"
            out |= {
                (scope, group, resource, verb)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            }
    return out


def allows(grants: set[Grant], record: RequestRecord) -> Grant | None:
    """The grant that allows `record`, if any."""
    resource = (record.resource or "") + (f"/{record.subresource}" if record.subresource else "")
    for scope in ("*", record.namespace or ""):
        grant = (scope, record.api_group or "", resource, record.verb)
        if grant in grants:
            return grant
    return None


def announced_keys(hub: HubHarness) -> list[str] | None:
    config_map = hub.api.get("configmaps", NAME, namespace=NAMESPACE)
    if config_map is None:
        return None
    try:
        return [h.public_key.b64 for h in decode(config_map.get("data"))]
    except ValueError:
        return None


def tamper_with_the_announcement(hub: HubHarness) -> None:
    """Someone overwrites, then deletes the announcement: the hub re-asserts it each time."""
    own = wait_for(lambda: announced_keys(hub), message="the hub's announcement")
    hub.api.patch("configmaps", NAME, {"data": {DATA_KEY: "{}"}}, namespace=NAMESPACE)
    wait_for(lambda: announced_keys(hub) == own, message="the announcement re-asserted")
    hub.api.delete("configmaps", NAME, namespace=NAMESPACE)
    wait_for(lambda: announced_keys(hub) == own, message="the announcement re-created")


def test_every_request_of_a_full_scenario_is_granted_and_every_grant_is_used(
    hub: HubHarness, emulator: EmulatorControls, tmp_path: Path
) -> None:
    grants = granted()
    assert grants, "10-rbac.yaml grants the ServiceAccount nothing"
    kubeconfig = hub.api.kubeconfig_for(SERVICE_ACCOUNT)

    good, other = new_key(), new_key()
    hub.create_peer("good", good, "100.96.0.2/32")
    hub.create_peer("bad", "not-a-key", "100.96.0.3/32")
    hub.start("--resync-interval", "0.5", kubeconfig=kubeconfig)
    hub.wait_peers({good})
    hub.wait_event("bad", "InvalidPeerConfig")
    hub.create_peer("other", other, "100.96.0.4/32")
    hub.wait_peers({good, other})
    hub.api.patch_node(
        "good", {"metadata": {"annotations": {PREFIX + "allowed-ips": "100.96.0.5/32"}}}
    )
    hub.api.delete_node("other")
    hub.wait_peers({good})
    hub.wait_reconciles(2)  # at least one resync list
    emulator.drop_watches()  # and a watch restart
    hub.wait_reconciles(2)
    tamper_with_the_announcement(hub)

    mine = [r for r in emulator.requests if r.user == SERVICE_ACCOUNT]
    resource_requests = [r for r in mine if r.is_resource_request]
    assert resource_requests, "the operator made no requests under its own identity"
    refused = [(r.verb, r.path) for r in resource_requests if allows(grants, r) is None]
    assert not refused, f"requests 10-rbac.yaml does not allow: {refused}"
    used = {allows(grants, r) for r in resource_requests}
    assert grants <= used, f"10-rbac.yaml grants what is never used: {sorted(grants - used)}"
    # Writes to Nodes only ever touch the hub's own Node.
    node_writes = [r for r in resource_requests if r.resource == "nodes" and r.verb == "patch"]
    assert {r.name for r in node_writes} == {"hub-1"}
    assert all(r.status is not None and r.status < 400 for r in resource_requests), [
        (r.verb, r.path, r.status) for r in resource_requests if (r.status or 0) >= 400
    ]


def test_on_a_real_apiserver_the_hub_needs_nothing_beyond_the_rbac_manifest(
    hub: HubHarness, request: pytest.FixtureRequest
) -> None:
    if hub.api.controls is not None:
        pytest.skip("RBAC is enforced only by the real kube-apiserver")
    plane: ControlPlane = request.getfixturevalue("real_api_server")
    for manifest in ("00-namespace.yaml", "10-rbac.yaml"):
        applied = plane.kubectl("apply", "-f", str(ROOT / "manifests" / manifest))
        assert applied.returncode == 0, applied.stderr
    kubeconfig = plane.kubeconfig_for(SERVICE_ACCOUNT)
    denied = plane.kubectl("get", "secrets", "-A", user=SERVICE_ACCOUNT)
    assert denied.returncode != 0, "the hub's identity can read Secrets: not least privilege"
    assert "forbidden" in denied.stderr.lower()

    good, other = new_key(), new_key()
    hub.create_peer("good", good, "100.96.0.2/32")
    hub.create_peer("bad", "not-a-key", "100.96.0.3/32")
    proc = hub.start("--resync-interval", "0.5", kubeconfig=kubeconfig)
    hub.wait_peers({good})
    hub.wait_event("bad", "InvalidPeerConfig")
    hub.create_peer("other", other, "100.96.0.4/32")
    hub.wait_peers({good, other})
    hub.api.delete_node("other")
    hub.wait_peers({good})
    hub.wait_reconciles(2)
    tamper_with_the_announcement(hub)
    annotations = (hub.api.get("nodes", "hub-1") or {})["metadata"]["annotations"]
    assert announced_keys(hub) == [annotations[PREFIX + "public-key"]]
    assert "403" not in proc.log
    assert "forbidden" not in proc.log.lower()

"""manifests/30-admission.yaml on a real kube-apiserver: nodes may not touch the hub label
(through `nodes` or `nodes/status`) or the hub Node's WireGuard annotations; everyone
else, and every other key, is unaffected; another prefix is a rendering away."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import require_control_plane
from wgkube.testing._client import ApiError, KubeHttpClient
from wgkube.testing.apiserver import RealApiServer
from wgkube.testing.controlplane import ControlPlane, node_user

POLICY = Path(__file__).resolve().parents[2] / "manifests" / "30-admission.yaml"
LABEL_REFUSED = "wg-kube: nodes may not add, change or remove the hub label"
ANNOTATION_REFUSED = "wg-kube: nodes may not change the wireguard.kube/ annotations"
HUB_ONLY_REFUSED = "wg-kube: nodes may not set the hub-only annotations"
OTHER_PREFIX = "wg.example.com/"

pytestmark = pytest.mark.realapi


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    require_control_plane()
    with ControlPlane() as control_plane:
        yield control_plane


def apply_policy(plane: ControlPlane, prefix: str = "wireguard.kube/") -> None:
    text = POLICY.read_text().replace("wireguard.kube/", prefix)
    result = subprocess.run(
        [str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", "apply", "-f", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def as_node(plane: ControlPlane, name: str, patch: dict[str, Any], status: bool = False) -> str:
    """The node's own request; '' when allowed, else the refusal's message."""
    client = KubeHttpClient(plane.kubeconfig_for(node_user(name)))
    try:
        client.patch("nodes", name, patch, subresource="status" if status else None)
    except ApiError as exc:
        if exc.code != 403:
            raise
        return str(exc.body)
    return ""


def enforced(plane: ControlPlane, name: str, label: str) -> None:
    """A new policy takes a moment to be enforced: wait until it refuses."""
    admin = RealApiServer(plane.kubeconfig)
    deadline = time.monotonic() + 20
    while as_node(plane, name, {"metadata": {"labels": {label: "true"}}}) == "":
        admin.patch_node(name, {"metadata": {"labels": {label: None}}})
        assert time.monotonic() < deadline, "the policy is not enforced"
        time.sleep(0.5)


def labels(value: str | None, key: str = "wireguard.kube/hub") -> dict[str, Any]:
    return {"metadata": {"labels": {key: value}}}


def test_nodes_may_not_add_change_or_remove_the_hub_label_through_nodes_or_status(
    plane: ControlPlane,
) -> None:
    admin = RealApiServer(plane.kubeconfig)
    admin.create_node("n-spoke")
    admin.create_node("n-hub", labels={"wireguard.kube/hub": "true"})
    apply_policy(plane)
    enforced(plane, "n-spoke", "wireguard.kube/hub")
    assert LABEL_REFUSED in as_node(plane, "n-spoke", labels("true"))
    assert LABEL_REFUSED in as_node(plane, "n-spoke", labels("true"), status=True)
    assert LABEL_REFUSED in as_node(plane, "n-hub", labels(None))
    assert LABEL_REFUSED in as_node(plane, "n-hub", labels("false"), status=True)
    # What a spoke does every day is untouched: its peer label and its own annotations.
    assert as_node(plane, "n-spoke", labels("true", "wireguard.kube/peer")) == ""
    annotate = {"metadata": {"annotations": {"wireguard.kube/public-key": "k", "x": "y"}}}
    assert as_node(plane, "n-spoke", annotate) == ""
    # On the hub's Node, its kubelet may not rewrite what the hub publishes.
    assert ANNOTATION_REFUSED in as_node(plane, "n-hub", annotate)
    assert as_node(plane, "n-hub", {"metadata": {"annotations": {"x": "y"}}}) == ""
    # Administrators (and the hub's ServiceAccount) are not nodes: they may.
    admin.patch_node("n-spoke", labels("true"))
    admin.patch_node("n-spoke", labels(None))


def test_nodes_may_not_set_the_hub_only_annotations_on_any_node(plane: ControlPlane) -> None:
    admin = RealApiServer(plane.kubeconfig)
    admin.create_node("n-plain")
    admin.create_node("n-hub2", labels={"wireguard.kube/hub": "true"})
    apply_policy(plane)
    enforced(plane, "n-plain", "wireguard.kube/hub")

    def annotate(key: str, value: str | None) -> dict[str, Any]:
        return {"metadata": {"annotations": {f"wireguard.kube/{key}": value}}}

    for key, value in (("hub-address", "100.96.0.9/32"), ("hub-priority", "1000")):
        # Not before it is a hub (it would choose its address), nor on a hub, nor by status.
        assert HUB_ONLY_REFUSED in as_node(plane, "n-plain", annotate(key, value))
        assert HUB_ONLY_REFUSED in as_node(plane, "n-plain", annotate(key, value), status=True)
        # An administrator sets it; then the node may neither change nor remove it.
        admin.patch_node("n-plain", annotate(key, value))
        assert HUB_ONLY_REFUSED in as_node(plane, "n-plain", annotate(key, "1"))
        assert HUB_ONLY_REFUSED in as_node(plane, "n-plain", annotate(key, None))
        admin.patch_node("n-hub2", annotate(key, value))
        assert as_node(plane, "n-hub2", annotate(key, "2")) != ""
    # A node's other annotations stay its own (with the hub-only ones in place).
    assert as_node(plane, "n-plain", {"metadata": {"annotations": {"x": "y"}}}) == ""
    assert as_node(plane, "n-plain", annotate("public-key", "k")) == ""


def test_a_node_cannot_create_itself_labelled_hub(plane: ControlPlane) -> None:
    apply_policy(plane)
    client = KubeHttpClient(plane.kubeconfig_for(node_user("n-new")))
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n-new"}}
    body["metadata"]["labels"] = {"wireguard.kube/hub": "true"}  # type: ignore[index]
    with pytest.raises(ApiError) as refused:
        client.create("nodes", body)
    assert refused.value.code == 403
    assert LABEL_REFUSED in str(refused.value.body)


def test_the_policy_rendered_for_another_prefix_guards_that_prefix(plane: ControlPlane) -> None:
    admin = RealApiServer(plane.kubeconfig)
    admin.create_node("n-other")
    apply_policy(plane, OTHER_PREFIX)  # replaces the default policy (same name)
    enforced(plane, "n-other", OTHER_PREFIX + "hub")
    refused = as_node(plane, "n-other", labels("true", OTHER_PREFIX + "hub"))
    assert "nodes may not add, change or remove the hub label wg.example.com/hub" in refused
    assert as_node(plane, "n-other", labels("true")) == ""  # the default prefix is not guarded

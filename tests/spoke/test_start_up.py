"""The spoke agent as systemd starts it on a real node's first boot: Type=notify readiness
through a real NOTIFY_SOCKET, and a start before the kubelet has created the Node."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.spoke.conftest import PREFIX, SpokeHarness
from wgkube.testing.apiserver import wait_for
from wgkube.testing.controlplane import kubectl_binary, node_user

ROOT = Path(__file__).resolve().parents[2] / "manifests"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20.0)
    try:
        yield sock
    finally:
        sock.close()


def test_ready_is_sent_once_the_interface_and_address_exist_then_the_status_follows_the_hub(
    spoke: SpokeHarness, notify_socket: socket.socket
) -> None:
    proc = spoke.start(NOTIFY_SOCKET=notify_socket.getsockname())
    first = notify_socket.recv(4096).decode()
    # At the moment READY=1 arrives the interface and its address exist (the kubelet,
    # ordered after this unit, binds --node-ip to it).
    device = spoke.device.device()
    assert first == "READY=1"
    assert device is not None
    assert device["addresses"] == ["100.96.0.2/32"]
    statuses: list[str] = []

    def status(prefix: str) -> str:
        while True:
            message = notify_socket.recv(4096).decode()
            assert message.startswith("STATUS="), message
            statuses.append(message)
            if message.startswith(prefix):
                return message

    assert "ConfigMap wg-kube/wg-kube-hub" in status("STATUS=waiting for the hub")
    hub_key = spoke.create_hub()
    spoke.wait_hub_peer(hub_key)
    assert status("STATUS=following hub") == "STATUS=following hub hub-1 at 203.0.113.1:51820"
    assert "READY=1" not in statuses  # sent once
    assert proc.proc.poll() is None


def registered_as(spoke: SpokeHarness, name: str) -> dict[str, Any] | None:
    node = spoke.api.get("nodes", name) or {}
    labels = node.get("metadata", {}).get("labels") or {}
    return node if labels.get(PREFIX + "peer") == "true" else None


def test_an_agent_started_before_its_node_exists_waits_and_then_registers(
    spoke: SpokeHarness,
) -> None:
    # The kubelet's identity for a Node that does not exist yet (ordered Before=kubelet),
    # with only what manifests/ grants on a real server.
    if spoke.api.controls is None:
        kubectl = kubectl_binary()
        assert kubectl is not None
        for manifest in ("00-namespace.yaml", "10-rbac.yaml"):
            subprocess.run(
                [
                    kubectl,
                    f"--kubeconfig={spoke.api.kubeconfig}",
                    "apply",
                    "-f",
                    str(ROOT / manifest),
                ],
                check=True,
                capture_output=True,
            )
    name = "spoke-late"
    kubeconfig = spoke.api.kubeconfig_for(node_user(name))
    proc = spoke.start(NODE_NAME=name, KUBECONFIG=str(kubeconfig))
    proc.wait_log(f"node {name} does not exist in the API yet")
    wait_for(lambda: spoke.device.device(), message="interface up before the Node exists")
    spoke.api.create_node(name, addresses={"InternalIP": "10.0.0.9"})  # the kubelet registers
    node = wait_for(lambda: registered_as(spoke, name), message="registration after creation")
    assert node["metadata"]["annotations"][PREFIX + "allowed-ips"] == "100.96.0.2/32"
    assert "permission denied" not in proc.log
    assert proc.proc.poll() is None

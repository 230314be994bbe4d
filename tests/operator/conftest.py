"""A real `wg-kube hub` process against the API fixture, with a file-backed memory kernel."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import BOTH, emulator_and_real
from tests.support.procs import MemoryDevice, Process, base_env
from wgkube.domain.announcement import NAME, NAMESPACE
from wgkube.domain.keys import PrivateKey
from wgkube.testing.apiserver import ApiServer, wait_for

PREFIX = "wireguard.kube/"
HUB = "hub-1"


def peer_labels() -> dict[str, str]:
    return {PREFIX + "peer": "true"}


def peer_annotations(
    key: str, allowed: str | None = None, endpoint: str | None = None
) -> dict[str, str]:
    out = {PREFIX + "public-key": key}
    if allowed is not None:
        out[PREFIX + "allowed-ips"] = allowed
    if endpoint is not None:
        out[PREFIX + "endpoint"] = endpoint
    return out


def new_key() -> str:
    return PrivateKey.generate().public_key().b64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class HubHarness:
    api: ApiServer
    tmp: Path
    device: MemoryDevice
    processes: list[Process] = field(default_factory=list)
    probe_port: int = field(default_factory=free_port)

    def readiness(self) -> dict[str, Any]:
        """The running hub's /readyz answer (503 bodies too)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/readyz") as r:
                data: dict[str, Any] = json.load(r)
        except urllib.error.HTTPError as exc:
            data = json.load(exc)
        return data

    def wait_reconciles(self, more: int) -> None:
        """Wait until the loop has completed `more` further reconciles (resyncs included)."""
        target = self.readiness()["reconciles"] + more
        wait_for(
            lambda: self.readiness()["reconciles"] >= target,
            message=f"{more} more reconciles",
        )

    @property
    def key_dir(self) -> Path:
        return self.tmp / "keys"

    def start(
        self,
        *args: str,
        node: str = HUB,
        wait_ready: bool = True,
        kubeconfig: Path | None = None,
    ) -> Process:
        env = base_env(
            KUBECONFIG=str(kubeconfig or self.api.kubeconfig),
            NODE_NAME=node,
            WGKUBE_MEMORY_STATE=str(self.device.path),
        )
        argv = [
            "hub",
            "--backend",
            "memory",
            "--key-dir",
            str(self.key_dir),
            "--probe-address",
            f"127.0.0.1:{self.probe_port}",
            "--debounce",
            "0.05",
            *args,
        ]
        proc = Process(argv, env=env, log_path=self.tmp / f"hub-{len(self.processes)}.log")
        self.processes.append(proc)
        if wait_ready:
            proc.wait_log("initial Node listing complete")
        return proc

    def stop_all(self) -> None:
        for proc in self.processes:
            proc.stop()

    def create_peer(
        self,
        name: str,
        key: str,
        allowed: str | None = None,
        endpoint: str | None = None,
        internal_ip: str | None = None,
    ) -> dict[str, Any]:
        addresses = {"InternalIP": internal_ip} if internal_ip else None
        return self.api.create_node(
            name,
            labels=peer_labels(),
            annotations=peer_annotations(key, allowed, endpoint),
            addresses=addresses,
        )

    def wait_peers(self, expected: set[str], timeout: float = 15.0) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = wait_for(
            lambda: p if set(p := self.device.peers()) == expected else None,
            timeout=timeout,
            message=f"peers {sorted(expected)}; have {sorted(self.device.peers())}",
        )
        return result

    def events(self, node: str) -> list[dict[str, Any]]:
        return [e for e in self.api.events() if e.get("involvedObject", {}).get("name") == node]

    def wait_event(self, node: str, reason: str, timeout: float = 15.0) -> dict[str, Any]:
        event: dict[str, Any] = wait_for(
            lambda: next((e for e in self.events(node) if e.get("reason") == reason), None),
            timeout=timeout,
            message=f"a {reason} Event on node {node}",
        )
        return event


@pytest.fixture(params=BOTH)
def api_server(request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    """This suite runs against the emulator and against a real kube-apiserver."""
    yield from emulator_and_real(request)


def ensure_namespace(api: ApiServer, name: str = NAMESPACE) -> None:
    """The hub's namespace (manifests/00-namespace.yaml), where it publishes its announcement."""
    if api.get("namespaces", name) is None:
        api.create(
            "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )


@pytest.fixture
def hub(api_server: ApiServer, tmp_path: Path) -> Iterator[HubHarness]:
    api_server.create_node(HUB, addresses={"InternalIP": "10.0.0.1", "ExternalIP": "203.0.113.1"})
    ensure_namespace(api_server)
    harness = HubHarness(api_server, tmp_path, MemoryDevice(tmp_path / "kernel.json"))
    try:
        yield harness
    finally:
        harness.stop_all()
        api_server.delete("configmaps", NAME, namespace=NAMESPACE)

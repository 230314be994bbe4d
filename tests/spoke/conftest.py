"""A real `wg-kube spoke` process against the API fixture, with a file-backed memory kernel."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import ensure_namespace
from tests.support.api import BOTH, emulator_and_real
from tests.support.procs import MemoryDevice, Process, base_env
from wgkube.domain import announcement
from wgkube.domain.annotations import HubRecord
from wgkube.domain.keys import PrivateKey, PublicKey
from wgkube.domain.net import Endpoint, parse_networks
from wgkube.testing.apiserver import ApiServer, wait_for

PREFIX = "wireguard.kube/"
NODE = "spoke-1"


@dataclass
class SpokeHarness:
    api: ApiServer
    tmp: Path
    device: MemoryDevice
    processes: list[Process] = field(default_factory=list)
    hubs: dict[str, HubRecord] = field(default_factory=dict)
    """What the announcement ConfigMap says, by hub Node name."""

    @property
    def key_file(self) -> Path:
        return self.tmp / "keys" / "wg0.key"

    def env(self, **extra: str) -> dict[str, str]:
        values = {
            "KUBECONFIG": str(self.api.kubeconfig),
            "NODE_NAME": NODE,
            "WG_ADDRESS": "100.96.0.2/32",
            "WG_BACKEND": "memory",
            "WG_PRIVATE_KEY_FILE": str(self.key_file),
            "WGKUBE_MEMORY_STATE": str(self.device.path),
            "POLL_INTERVAL": "0.5",
        }
        values.update(extra)
        return base_env(**values)

    def start(self, *args: str, **env: str) -> Process:
        proc = Process(
            ["spoke", *args],
            env=self.env(**env),
            log_path=self.tmp / f"spoke-{len(self.processes)}.log",
        )
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.processes:
            proc.stop()

    def node(self, name: str = NODE) -> dict[str, Any]:
        return self.api.get("nodes", name) or {}

    def create_hub(
        self,
        name: str = "hub-1",
        *,
        key: str | None = None,
        endpoint: str | None = "203.0.113.1:51820",
        allowed: str = "100.96.0.1/32",
    ) -> str:
        key = key or PrivateKey.generate().public_key().b64
        annotations = {PREFIX + "public-key": key, PREFIX + "allowed-ips": allowed}
        if endpoint:
            annotations[PREFIX + "endpoint"] = endpoint
        self.api.create_node(name, labels={PREFIX + "hub": "true"}, annotations=annotations)
        self.hubs[name] = HubRecord(
            node=name,
            public_key=PublicKey.parse(key),
            endpoint=Endpoint.parse(endpoint) if endpoint else None,
            allowed_ips=parse_networks(allowed),
        )
        self.write_announcement()
        return key

    def update_hub(self, name: str, *, key: str | None = None, endpoint: str | None = None) -> None:
        """The hub changed its key or endpoint: on its Node and in the announcement."""
        annotations = {PREFIX + "public-key": key, PREFIX + "endpoint": endpoint}
        patch = {k: v for k, v in annotations.items() if v is not None}
        self.api.patch_node(name, {"metadata": {"annotations": patch}})
        changes: dict[str, object] = {}
        if key is not None:
            changes["public_key"] = PublicKey.parse(key)
        if endpoint is not None:
            changes["endpoint"] = Endpoint.parse(endpoint)
        self.hubs[name] = self.hubs[name].model_copy(update=changes)
        self.write_announcement()

    def write_announcement(self, data: dict[str, str] | None = None) -> None:
        """As the hub publishes it (the admin writes it here, standing in for the hub)."""
        data = announcement.encode(self.hubs.values()) if data is None else data
        ns, name = announcement.NAMESPACE, announcement.NAME
        if self.api.get("configmaps", name, namespace=ns) is None:
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
            self.api.create("configmaps", {**body, "data": data}, namespace=ns)
        else:
            self.api.patch("configmaps", name, {"data": data}, namespace=ns)

    def wait_hub_peer(self, key: str, timeout: float = 15.0) -> dict[str, Any]:
        peer: dict[str, Any] = wait_for(
            lambda: self.device.peers().get(key) if set(self.device.peers()) == {key} else None,
            timeout=timeout,
            message=f"the hub peer {key}; have {sorted(self.device.peers())}",
        )
        return peer


@pytest.fixture(params=BOTH)
def api_server(request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    """This suite runs against the emulator and against a real kube-apiserver."""
    yield from emulator_and_real(request)


@pytest.fixture
def spoke(api_server: ApiServer, tmp_path: Path) -> Iterator[SpokeHarness]:
    api_server.create_node(NODE, addresses={"InternalIP": "10.0.0.2"})
    ensure_namespace(api_server)
    harness = SpokeHarness(api_server, tmp_path, MemoryDevice(tmp_path / "kernel.json"))
    try:
        yield harness
    finally:
        harness.stop_all()
        api_server.delete("configmaps", announcement.NAME, namespace=announcement.NAMESPACE)

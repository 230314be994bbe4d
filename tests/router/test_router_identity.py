"""The router's identity on a real kube-apiserver: the ServiceAccount wg-kube/wg-kube-router,
bound only by manifests/40-router.yaml, reads the announcement by name and nothing else; a
missing grant is reported as one (readiness, the Role and the manifest that grant it) and
recovers once applied. The router runs in-process over an in-memory route table (no
namespaces: no lab lock needed)."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.router.memory import MemoryTable
from tests.support.controlplane import require_control_plane
from tests.unit.builders import pub
from wgkube.desired.router import GatewayRoute
from wgkube.domain import announcement
from wgkube.domain.annotations import HubRecord
from wgkube.kube.client import Api
from wgkube.router.agent import Router
from wgkube.router.settings import RouterSettings
from wgkube.testing._client import ApiError, KubeHttpClient
from wgkube.testing.apiserver import RealApiServer
from wgkube.testing.controlplane import ControlPlane

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
ROUTER_USER = "system:serviceaccount:wg-kube:wg-kube-router"
LINK = ipaddress.ip_network("10.240.0.0/16")

pytestmark = pytest.mark.realapi


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    require_control_plane()
    with ControlPlane() as control_plane:
        yield control_plane


def apply(plane: ControlPlane, *files: str) -> None:
    docs: list[dict[str, Any]] = []
    for name in files:
        docs += [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    result = subprocess.run(
        [str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", "apply", "-f", "-"],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def until(what: str, probe: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not probe():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def router(plane: ControlPlane) -> AsyncIterator[tuple[Router, MemoryTable]]:
    apply(plane, "00-namespace.yaml", "10-rbac.yaml")  # not yet the router's grant
    settings = RouterSettings(
        node_name="node-1", kubeconfig=plane.kubeconfig_for(ROUTER_USER), poll_interval=2.0
    )
    table = MemoryTable([LINK])
    api = await Api.connect(settings.kubeconfig)
    agent = Router(settings=settings, api=api, table=table)
    task = asyncio.create_task(agent.run())
    try:
        yield agent, table
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


def hub_record(internal: str) -> HubRecord:
    return HubRecord(
        node="hub-1",
        public_key=pub("hub-1"),
        endpoint=None,
        allowed_ips=(ipaddress.ip_network("100.96.0.0/24"),),
        internal_ip=ipaddress.ip_address(internal),
    )


async def test_a_missing_grant_is_reported_and_the_router_recovers_once_it_is_applied(
    plane: ControlPlane, router: tuple[Router, MemoryTable]
) -> None:
    agent, table = router
    await until("the refusal is seen", lambda: agent.refused is not None)
    assert not agent.ready
    assert any("permission denied" in p for p in agent.summary()["problems"])
    assert table.writes == 0

    apply(plane, "40-router.yaml")
    await until("the grant takes effect", lambda: agent.refused is None, within=60)
    assert agent.summary()["problems"] == ["no hub is announced yet"]

    admin = RealApiServer(plane.kubeconfig)
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": announcement.NAME, "namespace": announcement.NAMESPACE},
        "data": announcement.encode([hub_record("10.240.0.4")]),
    }
    admin.create("configmaps", body)
    await until("the router is ready", lambda: agent.ready)
    want = GatewayRoute(ipaddress.ip_network("100.96.0.0/24"), ipaddress.ip_address("10.240.0.4"))
    assert table.routes == {want}
    assert agent.summary()["routes"] == ["100.96.0.0/24 via 10.240.0.4"]

    # Resyncs (every 2 s here) with nothing changed write nothing.
    writes = table.writes
    reconciles = agent.reconciles
    await until("two resyncs", lambda: agent.reconciles >= reconciles + 2, within=10)
    assert table.writes == writes == 1


def test_the_routers_identity_reads_the_announcement_by_name_and_nothing_else(
    plane: ControlPlane,
) -> None:
    apply(plane, "00-namespace.yaml", "10-rbac.yaml", "40-router.yaml")
    admin = RealApiServer(plane.kubeconfig)
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": announcement.NAME, "namespace": announcement.NAMESPACE},
        "data": announcement.encode([hub_record("10.240.0.4")]),
    }
    admin.create("configmaps", body)
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}, "data": {}}
    admin.create("configmaps", other, namespace=announcement.NAMESPACE)
    admin.create_node("node-1")
    client = KubeHttpClient(plane.kubeconfig_for(ROUTER_USER))
    found = client.get("configmaps", announcement.NAME, namespace=announcement.NAMESPACE)
    assert found is not None
    assert found["data"] == body["data"]
    refused: list[Callable[[], object]] = [
        lambda: client.get("configmaps", "other", namespace=announcement.NAMESPACE),
        lambda: client.list("configmaps", namespace=announcement.NAMESPACE),
        lambda: client.patch(
            "configmaps", announcement.NAME, {"data": {}}, namespace=announcement.NAMESPACE
        ),
        lambda: client.get("nodes", "node-1"),
        lambda: client.list("secrets", namespace=announcement.NAMESPACE),
    ]
    for attempt in refused:
        with pytest.raises(ApiError) as denied:
            attempt()
        assert denied.value.code == 403

"""The emulator's HTTP behaviour in detail, as a kube-apiserver would answer."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.api import async_wait_for, wait_for
from wgkube.testing import (
    ApiError,
    ApiServer,
    EmulatedApiServer,
    EmulatorControls,
    KubeHttpClient,
    load_kubeconfig,
)
from wgkube.testing._selectors import LabelSelector, SelectorError

NODES = "/api/v1/nodes"


@pytest.fixture
async def http(api_server: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    info = load_kubeconfig(api_server.kubeconfig)
    headers = {"Authorization": f"Bearer {info.token}"} if info.token else {}
    async with aiohttp.ClientSession(base_url=info.server, headers=headers) as session:
        yield session


async def read_events(
    response: aiohttp.ClientResponse, count: int | None = None
) -> list[dict[str, Any]]:
    """Read watch events until ``count`` of them (or the end of the stream), within 10 s."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while count is None or len(events) < count:
            line = await response.content.readline()
            if not line:
                break
            events.append(json.loads(line))
    return events


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"].get("metadata", {}).get("name", "")) for e in events]


async def test_discovery_is_what_kubectl_expects(http: aiohttp.ClientSession) -> None:
    async with http.get("/api") as resp:
        assert (await resp.json())["versions"] == ["v1"]
    async with http.get("/api/v1") as resp:
        core = await resp.json()
    assert core["groupVersion"] == "v1"
    names = {r["name"]: r for r in core["resources"]}
    assert names["nodes"]["kind"] == "Node"
    assert names["nodes"]["namespaced"] is False
    assert "nodes/status" in names
    assert names["events"]["namespaced"] is True
    async with http.get("/apis") as resp:
        groups = {g["name"]: g for g in (await resp.json())["groups"]}
    assert groups["apps"]["preferredVersion"]["groupVersion"] == "apps/v1"
    assert groups["events.k8s.io"]["preferredVersion"]["version"] == "v1"
    async with http.get("/apis/apps/v1") as resp:
        apps = await resp.json()
    assert apps["groupVersion"] == "apps/v1"
    assert "daemonsets" in {r["name"] for r in apps["resources"]}
    async with http.get("/version") as resp:
        assert (await resp.json())["gitVersion"].startswith("v1.")
    async with http.get("/openapi/v2") as resp:
        assert resp.status == 404


async def test_create_get_delete_status_codes(http: aiohttp.ClientSession) -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "hub"}}
    async with http.post(NODES, json=node) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["metadata"]["creationTimestamp"].endswith("Z")
    async with http.post(NODES, json=node) as resp:
        assert resp.status == 409
        status = await resp.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "AlreadyExists", 409)
    async with http.get(f"{NODES}/nobody") as resp:
        assert resp.status == 404
        assert (await resp.json())["reason"] == "NotFound"
    async with http.delete(f"{NODES}/hub") as resp:
        assert resp.status == 200
    async with http.get(f"{NODES}/hub") as resp:
        assert resp.status == 404
    configmap = {"metadata": {"name": "x"}, "data": {}}
    async with http.post("/api/v1/namespaces/missing/configmaps", json=configmap) as resp:
        assert resp.status == 404  # the namespace does not exist
    async with http.get(NODES, params={"labelSelector": "a in (b"}) as resp:
        assert resp.status == 400


@pytest.mark.parametrize("flag", ["true", "1", "True"])
async def test_watch_flag_variants(
    http: aiohttp.ClientSession, api_server: ApiServer, flag: str
) -> None:
    api_server.create_node("hub")
    async with http.get(NODES, params={"watch": flag}) as resp:
        assert summary(await read_events(resp, 1)) == [("ADDED", "hub")]
    async with http.get("/api/v1/watch/nodes") as resp:  # the legacy watch path
        assert summary(await read_events(resp, 1)) == [("ADDED", "hub")]
    async with http.get(NODES, params={"watch": "false"}) as resp:
        assert (await resp.json())["kind"] == "NodeList"


async def test_watch_event_flow_and_finalizers(
    http: aiohttp.ClientSession, api_server: ApiServer
) -> None:
    params = {"watch": "true", "resourceVersion": "0", "fieldSelector": "metadata.name=hub"}
    async with http.get(NODES, params=params) as resp:
        await asyncio.to_thread(api_server.create_node, "other")
        node = await asyncio.to_thread(api_server.create_node, "hub")
        # A no-op patch changes nothing: no resourceVersion, no event.
        same = await asyncio.to_thread(api_server.patch_node, "hub", {"metadata": {}})
        assert same["metadata"]["resourceVersion"] == node["metadata"]["resourceVersion"]
        await asyncio.to_thread(
            api_server.patch_node, "hub", {"metadata": {"finalizers": ["wgkube/test"]}}
        )
        await asyncio.to_thread(api_server.delete_node, "hub")
        marked = await asyncio.to_thread(api_server.get, "nodes", "hub")
        assert marked is not None
        assert marked["metadata"]["deletionTimestamp"]
        await asyncio.to_thread(api_server.patch_node, "hub", {"metadata": {"finalizers": None}})
        events = await read_events(resp, 4)
    assert summary(events) == [
        ("ADDED", "hub"),
        ("MODIFIED", "hub"),
        ("MODIFIED", "hub"),  # deletionTimestamp set
        ("DELETED", "hub"),  # the finalizer removed
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(set(versions))
    assert api_server.get("nodes", "hub") is None


async def test_spec_changes_bump_generation(api_server: ApiServer) -> None:
    created = api_server.create(
        "apps/v1/daemonsets",
        {"metadata": {"name": "agent", "namespace": "default"}, "spec": {"x": 1}},
    )
    assert created["metadata"]["generation"] == 1
    labelled = api_server.patch(
        "daemonsets", "agent", {"metadata": {"labels": {"a": "b"}}}, namespace="default"
    )
    assert labelled["metadata"]["generation"] == 1
    changed = api_server.patch("daemonsets", "agent", {"spec": {"x": 2}}, namespace="default")
    assert changed["metadata"]["generation"] == 2


async def test_fault_injection_has_no_side_effects(
    api_server: ApiServer, emulator: EmulatorControls
) -> None:
    node = api_server.create_node("hub")
    rv = emulator.resource_version
    emulator.fail_next(500, verb="patch", resource="nodes", name="hub")
    with pytest.raises(ApiError) as info:
        api_server.patch_node("hub", {"metadata": {"labels": {"a": "b"}}})
    assert info.value.code == 500
    assert emulator.resource_version == rv
    assert api_server.get("nodes", "hub") == node
    patched = api_server.patch_node("hub", {"metadata": {"labels": {"a": "b"}}})
    assert patched["metadata"]["labels"] == {"a": "b"}


async def test_request_log_identifies_verbs_and_users(
    api_server: ApiServer, emulator: EmulatorControls, tmp_path: Path
) -> None:
    alice = KubeHttpClient(api_server.kubeconfig_for("alice"))
    written = KubeHttpClient(api_server.write_kubeconfig(tmp_path / "alice", user="alice"))
    assert written.info.token == alice.info.token  # one identity, one token
    emulator.clear_requests()
    api_server.create_node("hub")
    alice.list("nodes", label_selector="a=b")
    alice.get("nodes", "hub")
    alice.patch("nodes", "hub", {"metadata": {"labels": {"a": "b"}}})
    alice.patch("nodes", "hub", {"status": {"phase": "x"}}, subresource="status")
    alice.delete("nodes", "hub")
    seen = [
        (r.user, r.verb, r.api_group, r.resource, r.subresource, r.name)
        for r in emulator.requests
        if r.is_resource_request
    ]
    assert seen == [
        ("admin", "create", "", "nodes", None, None),
        ("alice", "list", "", "nodes", None, None),
        ("alice", "get", "", "nodes", None, "hub"),
        ("alice", "patch", "", "nodes", None, "hub"),
        ("alice", "patch", "", "nodes", "status", "hub"),
        ("alice", "delete", "", "nodes", None, "hub"),
    ]
    configmaps = [
        r for r in emulator.requests if r.resource == "configmaps" and r.namespace == "default"
    ]
    assert configmaps == []
    info = load_kubeconfig(api_server.kubeconfig)
    async with aiohttp.ClientSession(base_url=info.server) as session:
        async with session.get(NODES, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        headers = {"Authorization": f"Bearer {info.token}", "Impersonate-User": "bob"}
        async with session.get("/api/v1/namespaces/default/configmaps", headers=headers) as resp:
            assert resp.status == 200
    last = emulator.requests[-1]
    assert (last.user, last.verb, last.namespace, last.resource) == (
        "bob",
        "list",
        "default",
        "configmaps",
    )


async def test_unavailable_and_dropped_watches(
    http: aiohttp.ClientSession, api_server: ApiServer, emulator: EmulatorControls
) -> None:
    async with http.get(NODES, params={"watch": "1"}) as resp:
        await async_wait_for(lambda: emulator.open_watches == 1)
        assert emulator.drop_watches() == 1
        assert await read_events(resp) == []  # the stream ended cleanly
    async with http.get(NODES, params={"watch": "1"}) as resp:
        await async_wait_for(lambda: emulator.open_watches == 1)
        with emulator.unavailable():
            assert await read_events(resp) == []
            async with http.get(NODES) as failed:
                assert failed.status == 503
                assert (await failed.json())["reason"] == "ServiceUnavailable"
            if isinstance(api_server, EmulatedApiServer):  # in-process writes still work
                api_server.call_in_loop(
                    lambda: api_server.emulator.create_object("nodes", {"metadata": {"name": "x"}})
                )
    async with http.get(NODES) as resp:
        assert resp.status == 200
        assert [n["metadata"]["name"] for n in (await resp.json())["items"]] == ["x"]


async def test_bookmarks_timeouts_and_python_writes_in_a_loop() -> None:
    async with (
        EmulatedApiServer(bookmark_interval=0.2) as api,
        aiohttp.ClientSession(base_url=api.url) as session,
    ):
        api.emulator.create_object("nodes", {"metadata": {"name": "hub"}})
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "sendInitialEvents": "true",
            "resourceVersionMatch": "NotOlderThan",
            "timeoutSeconds": "2",
        }
        started = time.monotonic()
        async with session.get(NODES, params=params) as resp:
            first = await read_events(resp, 2)
            api.emulator.patch_object("nodes", "hub", {"metadata": {"labels": {"a": "b"}}})
            rest = await read_events(resp)
        elapsed = time.monotonic() - started
    assert summary(first) == [("ADDED", "hub"), ("BOOKMARK", "")]
    assert first[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert ("MODIFIED", "hub") in summary(rest)
    assert summary(rest).count(("BOOKMARK", "")) >= 2  # periodic, and one at the timeout
    assert 1.5 < elapsed < 10


async def test_stopping_does_not_hang_on_open_watches() -> None:
    started = time.monotonic()
    async with (
        EmulatedApiServer() as api,
        aiohttp.ClientSession(base_url=api.url) as session,
        session.get(NODES, params={"watch": "true"}) as resp,
    ):
        await async_wait_for(lambda: api.emulator.open_watches == 1)
        await api.stop()
        assert await read_events(resp) == []
    assert time.monotonic() - started < 10


def test_label_selector_grammar() -> None:
    obj = {"metadata": {"labels": {"a": "1", "b": "x"}}}
    assert LabelSelector.parse("a=1,b in (x, y),!c,a").matches(obj)
    assert LabelSelector.parse("a>0,a<2").matches(obj)
    assert not LabelSelector.parse("b notin (x)").matches(obj)
    assert not LabelSelector.parse("a!=1").matches(obj)
    for bad in ("a in (b", "=x", "a in ()", "a>b"):
        with pytest.raises(SelectorError):
            LabelSelector.parse(bad)


def test_command_line_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wgkube.testing.apiserver",
            "--port",
            "0",
            "--kubeconfig",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            assert "serving at http://127.0.0.1:" in banner
            client = KubeHttpClient(kubeconfig)
            client.create("nodes", {"metadata": {"name": "hub"}})
            wait_for(lambda: client.get("nodes", "hub"))
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0

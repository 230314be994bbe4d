"""kubernetes-asyncio against the emulator: lists, watches, conflicts, patches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.api import async_wait_for
from wgkube.testing import ApiServer, EmulatorControls

PEER = "wireguard.kube/peer"


@pytest.fixture
async def core(api_server: ApiServer) -> AsyncIterator[client.CoreV1Api]:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(api_server.kubeconfig), client_configuration=configuration
    )
    async with client.ApiClient(configuration=configuration) as api_client:
        yield client.CoreV1Api(api_client)


def content(kind: str) -> dict[str, Any]:
    """kubernetes-asyncio's per-call content type for a patch: merge, json, strategic-merge."""
    return {"_content_type": f"application/{kind}-patch+json"}


def _node(name: str, **labels: str) -> client.V1Node:
    return client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels))


async def test_created_objects_carry_server_metadata(core: client.CoreV1Api) -> None:
    node = await core.create_node(_node("hub", **{PEER: "true"}))
    assert node.metadata.uid
    assert node.metadata.creation_timestamp is not None
    assert node.metadata.generation == 1
    first_rv = int(node.metadata.resource_version)
    other = await core.create_node(_node("spoke-1"))
    assert int(other.metadata.resource_version) > first_rv
    assert other.metadata.uid != node.metadata.uid


async def test_list_with_label_selectors(core: client.CoreV1Api, api_server: ApiServer) -> None:
    api_server.create_node("hub", labels={PEER: "true", "role": "hub"})
    api_server.create_node("spoke-1", labels={PEER: "true", "role": "spoke"})
    api_server.create_node("spoke-2", labels={PEER: "false", "role": "spoke"})
    api_server.create_node("other")

    async def names(**kwargs: Any) -> list[str]:
        result = await core.list_node(**kwargs)
        return [n.metadata.name for n in result.items]

    assert await names(label_selector=f"{PEER}=true") == ["hub", "spoke-1"]
    assert await names(label_selector=f"{PEER}==true,role=spoke") == ["spoke-1"]
    assert await names(label_selector=f"{PEER}!=true") == ["other", "spoke-2"]
    assert await names(label_selector="role in (hub, spoke)") == ["hub", "spoke-1", "spoke-2"]
    assert await names(label_selector="role notin (hub)") == ["other", "spoke-1", "spoke-2"]
    assert await names(label_selector=PEER) == ["hub", "spoke-1", "spoke-2"]
    assert await names(label_selector=f"!{PEER}") == ["other"]
    assert await names(field_selector="metadata.name=spoke-2") == ["spoke-2"]
    listing = await core.list_node()
    assert listing.kind == "NodeList"
    assert listing.api_version == "v1"
    assert int(listing.metadata.resource_version) > 0


async def test_watch_with_selector_and_resume(
    core: client.CoreV1Api, api_server: ApiServer
) -> None:
    api_server.create_node("hub", labels={PEER: "true"})
    listing = await core.list_node(label_selector=f"{PEER}=true")
    since = listing.metadata.resource_version

    api_server.create_node("spoke-1", labels={PEER: "true"})
    api_server.create_node("not-a-peer")
    api_server.patch_node("spoke-1", {"metadata": {"annotations": {"a": "1"}}})
    api_server.patch_node("spoke-1", {"metadata": {"labels": {PEER: None}}})
    api_server.patch_node("not-a-peer", {"metadata": {"labels": {PEER: "true"}}})

    seen: list[tuple[str, str]] = []
    async with watch.Watch().stream(
        core.list_node,
        label_selector=f"{PEER}=true",
        resource_version=since,
        timeout_seconds=1,
    ) as stream:
        async for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
    assert seen == [
        ("ADDED", "spoke-1"),
        ("MODIFIED", "spoke-1"),
        ("DELETED", "spoke-1"),  # stopped matching the selector
        ("ADDED", "not-a-peer"),  # started matching the selector
    ]


async def test_watch_without_resource_version_starts_with_current_objects(
    core: client.CoreV1Api, api_server: ApiServer
) -> None:
    api_server.create_node("hub", labels={PEER: "true"})
    events: list[tuple[str, str]] = []

    async def consume() -> None:
        async with watch.Watch().stream(
            core.list_node, label_selector=PEER, timeout_seconds=5
        ) as stream:
            async for event in stream:
                events.append((event["type"], event["object"].metadata.name))
                if event["object"].metadata.name == "spoke-1":
                    return

    task = asyncio.create_task(consume())
    await async_wait_for(lambda: events, message="the initial ADDED event")
    await asyncio.to_thread(api_server.create_node, "spoke-1", labels={PEER: "x"})
    await asyncio.wait_for(task, timeout=10)
    assert events == [("ADDED", "hub"), ("ADDED", "spoke-1")]


async def test_expired_resource_version_is_410_gone(
    core: client.CoreV1Api, api_server: ApiServer, emulator: EmulatorControls
) -> None:
    node = api_server.create_node("hub")
    api_server.patch_node("hub", {"metadata": {"labels": {"x": "y"}}})
    emulator.compact()

    async def drain() -> None:
        async with watch.Watch().stream(
            core.list_node,
            resource_version=node["metadata"]["resourceVersion"],
            timeout_seconds=1,
        ) as stream:
            async for _ in stream:
                pass

    with pytest.raises(ApiException) as info:
        await drain()
    assert info.value.status == 410


async def test_stale_update_is_409_conflict(core: client.CoreV1Api) -> None:
    node = await core.create_node(_node("hub"))
    node.metadata.labels = {"fresh": "yes"}
    updated = await core.replace_node("hub", node)  # the same resourceVersion: accepted
    assert updated.metadata.labels == {"fresh": "yes"}
    node.metadata.labels = {"stale": "yes"}  # still the old resourceVersion
    with pytest.raises(ApiException) as info:
        await core.replace_node("hub", node)
    assert info.value.status == 409
    with pytest.raises(ApiException) as info:
        await core.patch_node(
            "hub",
            {"metadata": {"resourceVersion": node.metadata.resource_version, "labels": {}}},
            **content("merge"),
        )
    assert info.value.status == 409


async def test_patch_types(core: client.CoreV1Api, api_server: ApiServer) -> None:
    api_server.create_node("hub", labels={"a": "1"})
    merged = await core.patch_node(
        "hub",
        {"metadata": {"labels": {"b": "2", "a": None}}},
        **content("merge"),
    )
    assert merged.metadata.labels == {"b": "2"}
    strategic = await core.patch_node(
        "hub",
        {"metadata": {"annotations": {"note": "x"}}},
        **content("strategic-merge"),
    )
    assert strategic.metadata.annotations == {"note": "x"}
    rv = strategic.metadata.resource_version
    patched = await core.patch_node(
        "hub",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/metadata/labels/c", "value": "3"},
            {"op": "remove", "path": "/metadata/annotations/note"},
        ],
        **content("json"),
    )
    assert patched.metadata.labels == {"b": "2", "c": "3"}
    assert not patched.metadata.annotations
    with pytest.raises(ApiException) as info:  # the test op now fails: 422, nothing changes
        await core.patch_node(
            "hub",
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                {"op": "add", "path": "/metadata/labels/d", "value": "4"},
            ],
            **content("json"),
        )
    assert info.value.status == 422
    assert (await core.read_node("hub")).metadata.labels == {"b": "2", "c": "3"}


async def test_status_subresource_is_isolated(
    core: client.CoreV1Api, api_server: ApiServer
) -> None:
    api_server.create_node("hub", addresses={"InternalIP": "10.0.0.1"})
    main = await core.patch_node(
        "hub",
        {"metadata": {"labels": {"x": "1"}}, "status": {"addresses": []}},
        **content("merge"),
    )
    assert main.metadata.labels == {"x": "1"}
    assert [a.address for a in main.status.addresses] == ["10.0.0.1"]  # status ignored
    status = await core.patch_node_status(
        "hub",
        {
            "metadata": {"labels": {"y": "2"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]},
        },
        **content("merge"),
    )
    assert [a.address for a in status.status.addresses] == ["10.0.0.2"]
    assert status.metadata.labels == {"x": "1"}  # metadata ignored on /status
    assert status.metadata.generation == 1


async def test_events_in_both_api_groups(core: client.CoreV1Api, api_server: ApiServer) -> None:
    node = api_server.create_node("hub")
    body = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="hub-"),
        involved_object=client.V1ObjectReference(
            kind="Node", name="hub", uid=node["metadata"]["uid"], api_version="v1"
        ),
        reason="Testing",
        message="hello",
        type="Warning",
    )
    created = await core.create_namespaced_event("default", body)
    assert created.metadata.name.startswith("hub-")
    assert [e["message"] for e in api_server.events(for_object=node)] == ["hello"]
    assert api_server.events(for_object="nobody") == []
    new_style = api_server.list("events.k8s.io/v1/events", namespace="default")
    assert [(e["note"], e["regarding"]["name"]) for e in new_style] == [("hello", "hub")]

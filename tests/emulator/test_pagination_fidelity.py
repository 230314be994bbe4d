"""Paginated lists, as a kube-apiserver serves them: `limit` gives that many with a
`continue` token, the following pages come from the first page's snapshot (a write
between pages is not seen in them), `resourceVersion=0` ignores the limit, and an unknown
token is 410 Expired. The hub and Kopf list peers in pages; a list served whole by the
emulator made its memory figures differ from the real server's. The same cases run
against the emulator and a real kube-apiserver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.api import BOTH, emulator_and_real
from wgkube.testing import ApiError, ApiServer, EmulatedApiServer

LABEL = "pagination.test/member"


@pytest.fixture(params=BOTH)
def api_server(request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    yield from emulator_and_real(request)


def page(api: ApiServer, **query: str) -> dict[str, Any]:
    body: dict[str, Any] = api.client.request(
        "GET", "/api/v1/nodes", query={"labelSelector": f"{LABEL}=yes", **query}
    )
    return body


def names(body: dict[str, Any]) -> list[str]:
    return [item["metadata"]["name"] for item in body["items"]]


@pytest.fixture
def members(api_server: ApiServer) -> list[str]:
    created = [f"page-{i:02d}" for i in range(7)]
    for name in created:
        api_server.create_node(name, labels={LABEL: "yes"})
    api_server.create_node("page-other")  # not selected
    return created


def test_pages_follow_continue_from_one_snapshot(api_server: ApiServer, members: list[str]) -> None:
    first = page(api_server, limit="3")
    assert names(first) == members[:3]
    token = first["metadata"]["continue"]
    version = first["metadata"]["resourceVersion"]
    # Written after the first page: the following pages are the first page's snapshot.
    api_server.patch_node(members[5], {"metadata": {"labels": {"late": "change"}}})
    api_server.delete_node(members[4])
    api_server.create_node("page-99", labels={LABEL: "yes"})
    second = page(api_server, limit="3", **{"continue": token})
    assert names(second) == members[3:6]
    assert second["metadata"]["resourceVersion"] == version
    assert "late" not in (second["items"][2]["metadata"].get("labels") or {})
    third = page(api_server, limit="3", **{"continue": second["metadata"]["continue"]})
    assert names(third) == members[6:]
    assert not third["metadata"].get("continue")
    # A token is not used up: a retried request gets the same page again.
    assert names(page(api_server, limit="3", **{"continue": token})) == members[3:6]
    # A new list sees the writes.
    assert names(page(api_server)) == [*members[:4], *members[5:], "page-99"]


def test_a_list_from_the_watch_cache_ignores_the_limit(
    api_server: ApiServer, members: list[str]
) -> None:
    body = page(api_server, limit="2", resourceVersion="0")
    assert names(body) == members
    assert not body["metadata"].get("continue")


def test_a_malformed_continue_token_is_400(api_server: ApiServer, members: list[str]) -> None:
    assert page(api_server, limit="2")["metadata"]["continue"]
    with pytest.raises(ApiError) as refused:
        page(api_server, limit="2", **{"continue": "not a token!"})
    assert refused.value.code == 400


def test_a_token_from_before_a_compaction_is_410_expired() -> None:
    """Emulator only: a real server's compaction runs on its own schedule."""
    with EmulatedApiServer() as api:
        for i in range(3):
            api.create_node(f"page-{i}", labels={LABEL: "yes"})
        token = page(api, limit="1")["metadata"]["continue"]
        api.patch_node("page-0", {"metadata": {"labels": {"late": "change"}}})
        api.compact()
        with pytest.raises(ApiError) as expired:
            page(api, limit="1", **{"continue": token})
        assert expired.value.code == 410
        assert expired.value.body["reason"] == "Expired"
        assert not api.internal_errors

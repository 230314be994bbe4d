"""Strategic merge patches of a Node's status merge its lists by their merge keys, as a
kube-apiserver does (conditions and addresses by `type`): a writer of one condition leaves
the others alone. The same cases run against the emulator and a real kube-apiserver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.api import BOTH, emulator_and_real
from wgkube.testing import ApiError, ApiServer

NODE = "smp-node"


@pytest.fixture(params=BOTH)
def api_server(request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    yield from emulator_and_real(request)


def cond(kind: str, status: str, reason: str = "Because") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": f"{kind} is {status}",
        "lastHeartbeatTime": "2026-01-01T00:00:00Z",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def status_patch(api: ApiServer, patch: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = api.patch_node(NODE, patch, patch_type="strategic", status=True)
    status: dict[str, Any] = body["status"]
    return status


def conditions(status: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["type"], c["status"], c["reason"]) for c in status.get("conditions") or []]


def test_conditions_merge_by_type_in_the_api_servers_order(api_server: ApiServer) -> None:
    api_server.create_node(NODE)
    status_patch(api_server, {"status": {"conditions": [cond("A", "True")]}})
    after = status_patch(api_server, {"status": {"conditions": [cond("B", "False")]}})
    # A new type is added (the patch's items first); the others stay.
    assert conditions(after) == [("B", "False", "Because"), ("A", "True", "Because")]
    # A condition of a known type is merged in place, field by field.
    changed = status_patch(
        api_server, {"status": {"conditions": [{"type": "A", "status": "False", "reason": "Now"}]}}
    )
    assert conditions(changed) == [("B", "False", "Because"), ("A", "False", "Now")]
    assert changed["conditions"][1]["message"] == "A is True"  # not in the patch: kept
    status_patch(api_server, {"status": {"conditions": [cond("C", "True")]}})
    # Live items not in the patch are interleaved where they were.
    mixed = status_patch(
        api_server, {"status": {"conditions": [cond("B", "True"), cond("D", "True")]}}
    )
    assert [c[0] for c in conditions(mixed)] == ["C", "B", "D", "A"]
    # `$patch: delete` removes one by its key; `$patch: replace` replaces the list.
    deleted = status_patch(
        api_server, {"status": {"conditions": [{"type": "A", "$patch": "delete"}]}}
    )
    assert [c[0] for c in conditions(deleted)] == ["C", "B", "D"]
    replaced = status_patch(
        api_server,
        {"status": {"conditions": [cond("C", "True"), {"$patch": "replace"}]}},
    )
    assert conditions(replaced) == [("C", "True", "Because")]
    # kubectl's `$setElementOrder` orders the result.
    ordered = status_patch(
        api_server,
        {
            "status": {
                "$setElementOrder/conditions": [{"type": "C"}, {"type": "E"}],
                "conditions": [cond("E", "True")],
            }
        },
    )
    assert [c[0] for c in conditions(ordered)] == ["C", "E"]
    # null removes the list.
    assert conditions(status_patch(api_server, {"status": {"conditions": None}})) == []


def test_a_condition_without_its_merge_key_is_refused(api_server: ApiServer) -> None:
    api_server.create_node(NODE)
    status_patch(api_server, {"status": {"conditions": [cond("A", "True")]}})
    with pytest.raises(ApiError, match="does not contain declared merge key: type"):
        status_patch(api_server, {"status": {"conditions": [{"status": "True"}]}})


def test_addresses_merge_by_type(api_server: ApiServer) -> None:
    api_server.create_node(NODE, addresses={"InternalIP": "10.0.0.1"})
    after = status_patch(
        api_server, {"status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.1"}]}}
    )
    assert after["addresses"] == [
        {"type": "ExternalIP", "address": "203.0.113.1"},
        {"type": "InternalIP", "address": "10.0.0.1"},
    ]
    moved = status_patch(
        api_server, {"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]}}
    )
    assert moved["addresses"] == [
        {"type": "ExternalIP", "address": "203.0.113.1"},
        {"type": "InternalIP", "address": "10.0.0.9"},
    ]


def test_a_merge_patch_still_replaces_the_whole_list(api_server: ApiServer) -> None:
    api_server.create_node(NODE)
    status_patch(api_server, {"status": {"conditions": [cond("A", "True"), cond("B", "True")]}})
    body = api_server.patch_node(
        NODE, {"status": {"conditions": [cond("C", "True")]}}, patch_type="merge", status=True
    )
    assert conditions(body["status"]) == [("C", "True", "Because")]

"""The router agent over an in-memory route table: what it does with each announcement
(good, changed, malformed, gone, another hub's key) and what it says."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, cast

import pytest

from tests.router.memory import MemoryTable
from tests.unit.builders import pub
from wgkube.desired.router import GatewayRoute
from wgkube.domain import announcement
from wgkube.domain.annotations import HubRecord
from wgkube.domain.errors import OperationRejected
from wgkube.kube.client import Api
from wgkube.router.agent import Router
from wgkube.router.settings import RouterSettings

LINK = ipaddress.ip_network("10.240.0.0/16")
OVERLAY = ipaddress.ip_network("100.96.0.0/24")


def hub(internal: str = "10.240.0.4", node: str = "hub-1") -> HubRecord:
    return HubRecord(
        node=node,
        public_key=pub(node),
        endpoint=None,
        allowed_ips=(OVERLAY,),
        internal_ip=ipaddress.ip_address(internal),
    )


def config_map(*hubs: HubRecord) -> dict[str, Any]:
    return {"metadata": {"name": announcement.NAME}, "data": announcement.encode(hubs)}


def make(**settings: Any) -> tuple[Router, MemoryTable]:
    table = MemoryTable([LINK])
    # The API is not used: the tests feed the announcement handlers as the watch would.
    router = Router(
        settings=RouterSettings(node_name="node-1", **settings), api=cast(Api, None), table=table
    )
    return router, table


def via(gateway: str) -> set[GatewayRoute]:
    return {GatewayRoute(OVERLAY, ipaddress.ip_address(gateway))}


async def test_routes_follow_the_announced_hub_and_a_resync_writes_nothing() -> None:
    router, table = make()
    await router._listed([config_map(hub())])
    assert await router.reconcile()
    assert table.routes == via("10.240.0.4")
    assert await router.reconcile() == ()
    await router._event("MODIFIED", config_map(hub("10.240.0.5")))
    (change,) = await router.reconcile()
    assert str(change) == "~ route 100.96.0.0/24 via 10.240.0.4 -> via 10.240.0.5"
    assert table.routes == via("10.240.0.5")
    assert table.writes == 2
    assert router.ready


async def test_a_malformed_or_deleted_announcement_keeps_the_last_good_hub(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router, table = make()
    await router._listed([config_map(hub())])
    await router.reconcile()
    caplog.set_level(logging.INFO, "wgkube.router")
    await router._event("MODIFIED", {"data": {announcement.DATA_KEY: "{"}})
    assert await router.reconcile() == ()
    await router._event("DELETED", config_map(hub()))
    assert await router.reconcile() == ()
    assert table.routes == via("10.240.0.4")
    assert router.ready
    assert "hub announcement refused, keeping the last good hub" in caplog.text
    assert "is absent; keeping routes via hub-1" in caplog.text


async def test_with_a_pinned_key_another_hubs_announcement_is_refused() -> None:
    router, table = make(hub_public_key=pub("hub-1").b64)
    await router._listed([config_map(hub("10.240.0.9", node="hub-0"))])
    assert await router.reconcile() == ()
    assert table.routes == set()
    assert not router.ready
    await router._event("MODIFIED", config_map(hub("10.240.0.9", node="hub-0"), hub()))
    await router.reconcile()
    assert table.routes == via("10.240.0.4")


async def test_several_hubs_the_router_follows_the_one_spokes_follow() -> None:
    router, table = make()
    hubs = (hub("10.240.0.4", node="hub-b"), hub("10.240.0.7", node="hub-a"))
    await router._listed([config_map(*hubs)])
    await router.reconcile()
    assert announcement.trusted_hub(announcement.decode(config_map(*hubs)["data"]), None).node == (
        "hub-a"
    )
    assert table.routes == via("10.240.0.7")


async def test_a_hub_off_the_link_leaves_routes_and_makes_the_router_not_ready() -> None:
    router, table = make()
    await router._listed([config_map(hub())])
    await router.reconcile()
    await router._event("MODIFIED", config_map(hub("192.0.2.7")))
    assert await router.reconcile() == ()
    assert table.routes == via("10.240.0.4")
    assert not router.ready
    (problem,) = router.summary()["problems"]
    assert "192.0.2.7 is not on this node's link" in problem


async def test_a_route_removed_by_hand_is_put_back_on_the_next_resync() -> None:
    router, table = make()
    await router._listed([config_map(hub())])
    await router.reconcile()
    table.routes.clear()
    await router.reconcile()
    assert table.routes == via("10.240.0.4")


def test_status_lines_say_what_the_router_does() -> None:
    lines: list[str] = []
    router, _ = make()
    router.status = lines.append
    router._state()
    assert lines == ["not ready: no reconcile has completed yet"]


async def test_a_conflicting_route_holds_back_no_other_and_is_reported_until_it_goes() -> None:
    aggregate = ipaddress.ip_network("10.244.128.0/17")
    router, table = make(prefixes=(OVERLAY, aggregate))
    table.foreign.add(aggregate)
    await router._listed([config_map(hub())])
    with pytest.raises(OperationRejected, match=r"10\.244\.128\.0/17 is not wg-kube's"):
        await router.reconcile()
    assert table.routes == via("10.240.0.4")
    table.foreign.clear()
    await router.reconcile()
    assert table.routes == via("10.240.0.4") | {
        GatewayRoute(aggregate, ipaddress.ip_address("10.240.0.4"))
    }

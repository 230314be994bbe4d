"""The router's rtnetlink adapter on a real kernel (a throw-away network namespace): its
gateway routes are made exclusively, adopted, changed in place and removed, and nobody
else's route is ever touched."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest

from wgkube.desired.router import GatewayRoute
from wgkube.diff.gateway import AddGatewayRoute, ChangeGateway, RemoveGatewayRoute
from wgkube.domain.errors import RouteConflict
from wgkube.kernel.gateway import GatewayTable
from wgkube.testing.netns import NetNS, can_make_namespaces, create_netns, delete_netns

pytestmark = pytest.mark.userspace

HUB = ipaddress.ip_address("10.240.0.4")
MOVED = ipaddress.ip_address("10.240.0.5")
OVERLAY = ipaddress.ip_network("100.96.0.0/24")


@pytest.fixture
async def table() -> AsyncIterator[tuple[GatewayTable, NetNS]]:
    reason = can_make_namespaces()
    if reason is not None:
        pytest.skip(reason)
    ns = create_netns("wgkrt")
    try:
        # A veth pair inside the namespace (this kernel may lack the dummy link type).
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ns.ip("link", "set", "eth0p", "up")
        ns.ip("address", "add", "10.240.0.2/16", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        adapter = GatewayTable(netns=ns.name)
        yield adapter, ns
        await adapter.close()
    finally:
        delete_netns(ns)


def routes(ns: NetNS, *args: str) -> str:
    return ns.ip("route", "show", *args).stdout.strip()


async def test_a_route_is_made_read_back_as_ours_and_adopted_when_made_again(
    table: tuple[GatewayTable, NetNS],
) -> None:
    adapter, ns = table
    ours = GatewayRoute(OVERLAY, HUB)
    await adapter.apply([AddGatewayRoute(ours)])
    assert routes(ns, "proto", "87") == "100.96.0.0/24 via 10.240.0.4 dev eth0"
    assert await adapter.observe() == {ours}
    await adapter.apply([AddGatewayRoute(ours)])  # a restart racing a reconcile
    assert routes(ns, "proto", "87") == "100.96.0.0/24 via 10.240.0.4 dev eth0"
    assert ipaddress.ip_network("10.240.0.0/16") in await adapter.connected()
    assert OVERLAY not in await adapter.connected()


async def test_a_foreign_route_to_the_prefix_is_a_conflict_and_stays_as_it_is(
    table: tuple[GatewayTable, NetNS],
) -> None:
    adapter, ns = table
    ns.ip("route", "add", str(OVERLAY), "via", "10.240.0.9", "proto", "static")
    with pytest.raises(RouteConflict, match=r"proto 4 via 10\.240\.0\.9") as conflict:
        await adapter.apply([AddGatewayRoute(GatewayRoute(OVERLAY, HUB))])
    assert "File exists" in conflict.value.answer
    with pytest.raises(RouteConflict):
        await adapter.apply([ChangeGateway(OVERLAY, HUB, MOVED)])
    assert routes(ns, str(OVERLAY)) == "100.96.0.0/24 via 10.240.0.9 dev eth0 proto static"
    assert await adapter.observe() == frozenset()


async def test_a_new_gateway_replaces_ours_in_place_and_removal_takes_only_ours(
    table: tuple[GatewayTable, NetNS],
) -> None:
    adapter, ns = table
    await adapter.apply([AddGatewayRoute(GatewayRoute(OVERLAY, HUB))])
    assert routes(ns, "proto", "87") == "100.96.0.0/24 via 10.240.0.4 dev eth0"
    await adapter.apply([ChangeGateway(OVERLAY, HUB, MOVED)])
    assert routes(ns, "proto", "87") == "100.96.0.0/24 via 10.240.0.5 dev eth0"
    # Someone else's routes: an interface route with our protocol (a hub's or a spoke's
    # kind) and a gateway route of another protocol.
    ns.ip("route", "add", "198.51.100.0/24", "dev", "eth0", "proto", "87")
    ns.ip("route", "add", "192.0.2.0/24", "via", "10.240.0.9", "proto", "static")
    assert await adapter.observe() == {GatewayRoute(OVERLAY, MOVED)}
    await adapter.apply(
        [
            RemoveGatewayRoute(GatewayRoute(OVERLAY, MOVED)),
            RemoveGatewayRoute(GatewayRoute(ipaddress.ip_network("192.0.2.0/24"), MOVED)),
            RemoveGatewayRoute(GatewayRoute(OVERLAY, MOVED)),  # absent: fine
        ]
    )
    assert routes(ns, "proto", "87") == "198.51.100.0/24 dev eth0 scope link"
    assert routes(ns, "192.0.2.0/24") == "192.0.2.0/24 via 10.240.0.9 dev eth0 proto static"
    assert adapter.writes == 5


async def test_a_gateway_off_the_link_is_refused_by_the_kernel_and_nothing_is_made(
    table: tuple[GatewayTable, NetNS],
) -> None:
    adapter, ns = table
    with pytest.raises(Exception, match=r"add route 100\.96\.0\.0/24 via 192\.0\.2\.7"):
        await adapter.apply(
            [AddGatewayRoute(GatewayRoute(OVERLAY, ipaddress.ip_address("192.0.2.7")))]
        )
    assert routes(ns, "proto", "87") == ""

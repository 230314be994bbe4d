"""Routes made by anyone else are never touched: the same contract for every adapter.

Real adapters get an underlay link `eth0` (a veth pair) with a connected subnet and
static routes in their namespace; the memory kernel is told about the same routes.
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.kernel.conftest import Harness
from tests.kernel.test_contract import A, B, converge, peer, state
from wgkube.desired.protected import host_protected
from wgkube.diff.model import AddRoute, RemoveRoute
from wgkube.domain.errors import RouteConflict
from wgkube.kernel.base import RtnlBackedKernel
from wgkube.kernel.memory import MemoryKernel
from wgkube.kernel.port import Kernel
from wgkube.kernel.rtnl import ADD_BATCH

net = ipaddress.ip_network

CONNECTED = "198.51.100.0/24"
STATIC4 = "203.0.113.0/24"
STATIC6 = "fd05:1::/64"
OTHER_DEVICE = "192.0.2.0/25"
"""A proto-87 route, but through the underlay link: not this device's, so not ours."""


def underlay(h: Harness, kernel: Kernel) -> None:
    """eth0 with 198.51.100.7/24 (the kernel's connected route) and three foreign routes."""
    if isinstance(kernel, MemoryKernel):
        kernel.add_foreign_route(net(CONNECTED), "proto kernel dev eth0")
        kernel.add_foreign_route(net(STATIC4), "proto static dev eth0")
        kernel.add_foreign_route(net(STATIC6), "proto static dev eth0")
        kernel.add_foreign_route(net(OTHER_DEVICE), "proto 87 dev eth0")
        return
    assert h.ns is not None
    ns = h.ns
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    ns.ip("link", "set", "eth0p", "up")
    ns.ip("link", "set", "eth0", "up")
    ns.ip("address", "add", "198.51.100.7/24", "dev", "eth0")
    ns.ip("route", "add", STATIC4, "dev", "eth0", "proto", "static")
    # metric 1024: what the kernel gives an IPv6 route of ours, so the keys are equal.
    ns.ip("-6", "route", "add", STATIC6, "dev", "eth0", "proto", "static", "metric", "1024")
    ns.ip("route", "add", OTHER_DEVICE, "dev", "eth0", "proto", "87")


def foreign(h: Harness, kernel: Kernel) -> set[str]:
    """Every route that is not this device's proto-87 route, as the system shows it."""
    if isinstance(kernel, MemoryKernel):
        return {f"{dst} {owner}" for dst, owner in kernel.foreign_routes().items()}
    assert h.ns is not None
    lines = h.ns.ip("route", "show", "table", "all").stdout.splitlines()
    lines += h.ns.ip("-6", "route", "show", "table", "all").stdout.splitlines()
    # IPv6 link-local routes are left out: the kernel adds them on its own schedule (after
    # duplicate address detection on the new veth), and no allowed-ips can reach them.
    return {
        line.strip()
        for line in lines
        if not ("proto 87" in line and h.ifname in line) and "fe80::" not in line
    }


async def prepared(h: Harness) -> tuple[Kernel, set[str]]:
    kernel = h.adapter()
    underlay(h, kernel)
    desired = state(
        h,
        peer(A, CONNECTED, STATIC4, STATIC6, OTHER_DEVICE),
        peer(B, "10.2.0.0/24"),
        routes=("10.2.0.0/24",),
    )
    await converge(kernel, desired)
    return kernel, foreign(h, kernel)


@pytest.mark.parametrize(
    ("route", "owner"),
    [
        pytest.param(CONNECTED, "proto kernel dev eth0", id="connected"),
        pytest.param(STATIC4, "proto static dev eth0", id="static-ipv4"),
        pytest.param(STATIC6, "proto static dev eth0", id="static-ipv6"),
        pytest.param(OTHER_DEVICE, "proto 87 dev eth0", id="ours-on-another-device"),
    ],
)
async def test_a_route_held_by_another_owner_is_a_conflict_and_stays_as_it_is(
    harness: Harness, route: str, owner: str
) -> None:
    kernel, before = await prepared(harness)
    with pytest.raises(RouteConflict) as caught:
        await kernel.apply(harness.ifname, [AddRoute(net(route))])
    assert route in str(caught.value)
    assert owner in str(caught.value), "the conflict names the owner"
    assert foreign(harness, kernel) == before
    assert (await kernel.observe(harness.ifname)).routes == {net("10.2.0.0/24")}


async def test_a_foreign_route_in_a_long_run_of_new_routes_stops_it_there_and_stays(
    harness: Harness,
) -> None:
    """Routes are written in batches (ADD_BATCH a send on the real adapters): a conflict
    in the second batch is raised as it is; every route before it is in place, one of
    ours already there is adopted, the foreign route and its owner are left alone, and
    applying the run again (as the reconciler's bisection does) adds the rest."""
    kernel, before = await prepared(harness)
    ours = [net(f"10.{64 + i // 256}.{i % 256}.0/24") for i in range(3 * ADD_BATCH)]
    at = ADD_BATCH + ADD_BATCH // 2
    run = [AddRoute(n) for n in ours[:at]] + [AddRoute(net(STATIC4))]
    run += [AddRoute(n) for n in ours[at:]] + [AddRoute(net("10.2.0.0/24"))]
    with pytest.raises(RouteConflict) as caught:
        await kernel.apply(harness.ifname, run)
    assert STATIC4 in str(caught.value)
    assert "proto static dev eth0" in str(caught.value)
    routes = (await kernel.observe(harness.ifname)).routes
    assert set(ours[:at]) <= routes, "every route before the conflict is in place"
    assert not set(ours[2 * ADD_BATCH :]) & routes, "no batch after the conflict's is sent"
    assert foreign(harness, kernel) == before
    writes = kernel.writes
    await kernel.apply(harness.ifname, [op for op in run if op != AddRoute(net(STATIC4))])
    assert (await kernel.observe(harness.ifname)).routes == {*ours, net("10.2.0.0/24")}
    assert kernel.writes - writes == len(run) - 1, "each route counted once, adopted or added"
    assert foreign(harness, kernel) == before


async def test_removing_our_route_to_a_foreign_destination_deletes_nothing_foreign(
    harness: Harness,
) -> None:
    kernel, before = await prepared(harness)
    ops = [RemoveRoute(net(r)) for r in (CONNECTED, STATIC4, STATIC6, OTHER_DEVICE)]
    await kernel.apply(harness.ifname, ops)
    assert foreign(harness, kernel) == before
    assert (await kernel.observe(harness.ifname)).routes == {net("10.2.0.0/24")}


async def test_our_routes_beside_foreign_ones_come_and_go_while_the_foreign_ones_stay(
    harness: Harness,
) -> None:
    kernel, before = await prepared(harness)
    nearby = ("198.51.100.0/25", "203.0.113.0/25", "fd05:1::/96")
    desired = state(harness, peer(A, *nearby), peer(B, "10.2.0.0/24"), routes=nearby)
    await converge(kernel, desired)
    assert (await kernel.observe(harness.ifname)).routes == {net(n) for n in nearby}
    await converge(kernel, state(harness, peer(A, *nearby), peer(B, "10.2.0.0/24")))
    assert (await kernel.observe(harness.ifname)).routes == frozenset()
    assert foreign(harness, kernel) == before


async def test_the_host_view_names_addresses_gateways_and_networks_but_not_the_device(
    harness: Harness,
) -> None:
    if not harness.real:
        pytest.skip("the memory kernel has no host; the hub reads none for it")
    kernel, _ = await prepared(harness)
    assert isinstance(kernel, RtnlBackedKernel)
    assert harness.ns is not None
    harness.ns.ip("route", "add", "default", "via", "198.51.100.1", "dev", "eth0")
    await kernel.apply(harness.ifname, [AddRoute(net("10.3.0.0/24"))])
    addresses, routes = await kernel.rtnl.host()
    protected = host_protected(addresses, routes, wireguard=harness.ifname, own_protocol=87)
    whats = {p.what for p in protected}
    assert {
        "the node's own address 198.51.100.7 (dev eth0)",
        "the default gateway 198.51.100.1 (dev eth0)",
        "the directly connected network 198.51.100.0/24 (dev eth0)",
        f"the directly connected network {STATIC4} (dev eth0)",
    } <= whats
    covered = {p.network for p in protected}
    # The device's own addresses and connected routes, and routes of ours, are no hazard.
    assert not covered & {net("100.96.0.1/32"), net("100.96.0.0/24"), net("10.2.0.0/24")}
    assert not covered & {net("10.3.0.0/24"), net(OTHER_DEVICE)}
    # The hub reads the host without its own routes (its peers' prefixes), left
    # undecoded: the same set. Enough of ours that whole datagrams of the dump are ours.
    many = [AddRoute(net(f"10.4.{i // 250}.{i % 250}/32")) for i in range(1500)]
    await kernel.apply(harness.ifname, many)
    addresses, routes = await kernel.rtnl.host()
    own = {r.network for r in routes if r.protocol == 87}
    assert {net("10.2.0.0/24"), net("10.3.0.0/24")} | {op.destination for op in many} <= own
    skipped_addresses, without_own = await kernel.rtnl.host(skip_protocol=87)
    assert without_own == [r for r in routes if r.protocol != 87]
    assert any(r.network == net("198.51.100.0/24") for r in without_own)
    assert skipped_addresses == addresses

"""The router's decision (which prefixes via which gateway, or why none) and its route
diff, from tables; and the announcement's optional router fields."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tests.unit.builders import nets, pub
from wgkube.desired.router import GatewayRoute, RouterDesired, on_link, router_routes
from wgkube.diff.gateway import (
    AddGatewayRoute,
    ChangeGateway,
    GatewayOperation,
    RemoveGatewayRoute,
    plan_gateway_routes,
)
from wgkube.domain.annotations import HubRecord
from wgkube.domain.announcement import DATA_KEY, decode, encode
from wgkube.domain.errors import AnnouncementError
from wgkube.domain.net import IPAddress

LINK = nets("10.240.0.0/16")
"""The cluster's node network, as an ordinary node has it connected."""


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def route(network: str, gateway: str) -> GatewayRoute:
    return GatewayRoute(ipaddress.ip_network(network), ip(gateway))


def hub(
    *,
    internal: str | None = "10.240.0.4",
    allowed: tuple[str, ...] = ("100.96.0.0/24",),
    prefixes: tuple[str, ...] | None = None,
    node: str = "hub-1",
) -> HubRecord:
    return HubRecord(
        node=node,
        public_key=pub(node),
        endpoint=None,
        allowed_ips=nets(*allowed),
        internal_ip=ip(internal) if internal else None,
        router_prefixes=nets(*prefixes) if prefixes is not None else None,
    )


# -- router_routes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "override", "routes"),
    [
        (hub(), None, {route("100.96.0.0/24", "10.240.0.4")}),
        (
            hub(allowed=("100.96.0.0/24", "10.240.0.0/16")),
            None,
            {route("100.96.0.0/24", "10.240.0.4")},
        ),
        (
            hub(allowed=("100.96.0.0/24",), prefixes=("100.96.0.0/24", "10.244.128.0/17")),
            None,
            {route("100.96.0.0/24", "10.240.0.4"), route("10.244.128.0/17", "10.240.0.4")},
        ),
        (hub(prefixes=()), None, set()),
        (
            hub(prefixes=("100.96.0.0/24",)),
            nets("100.96.0.0/25"),
            {route("100.96.0.0/25", "10.240.0.4")},
        ),
    ],
    ids=[
        "allowed-ips-via-internal-ip",
        "own-link-never-routed-via-the-hub",
        "router-prefixes-win-over-allowed-ips",
        "empty-router-prefixes-route-nothing",
        "the-router-setting-wins",
    ],
)
def test_the_overlay_goes_via_the_hubs_internal_ip(
    record: HubRecord, override: tuple[ipaddress.IPv4Network, ...] | None, routes: set[GatewayRoute]
) -> None:
    desired = router_routes(record, node_name="node-1", connected=LINK, prefixes=override)
    assert desired.routes == frozenset(routes)
    assert desired.ready
    assert desired.gateway == ip("10.240.0.4")


@pytest.mark.parametrize(
    ("allowed", "skipped"),
    [
        (("0.0.0.0/0",), "0.0.0.0/0: overlaps this node's connected network 10.240.0.0/16"),
        (("10.240.5.0/24",), "10.240.5.0/24: overlaps this node's connected network 10.240.0.0/16"),
        (("fd00::/64",), "fd00::/64: IPv6, and the gateway 10.240.0.4 is not"),
    ],
    ids=["default-route", "inside-the-link", "other-family"],
)
def test_a_prefix_that_would_capture_the_nodes_link_is_skipped_with_its_reason(
    allowed: tuple[str, ...], skipped: str
) -> None:
    desired = router_routes(hub(allowed=allowed), node_name="node-1", connected=LINK)
    assert desired.routes == frozenset()
    assert [f"{net}: {why}" for net, why in desired.skipped] == [skipped]
    assert desired.ready


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (None, "no hub is announced yet"),
        (hub(internal=None), "hub hub-1 announces no internalIP"),
        (hub(internal="192.0.2.7"), "hub hub-1's InternalIP 192.0.2.7 is not on this node's link"),
    ],
    ids=["no-hub", "no-internal-ip", "hub-off-link"],
)
def test_without_a_usable_gateway_routes_stay_as_they_are_and_the_router_is_not_ready(
    record: HubRecord | None, problem: str
) -> None:
    desired = router_routes(record, node_name="node-1", connected=LINK)
    assert desired.routes is None
    assert desired.problem is not None
    assert desired.problem.startswith(problem)
    assert not desired.ready


def test_an_off_link_hub_names_the_cloud_route_table_alternative() -> None:
    desired = router_routes(hub(internal="192.0.2.7"), node_name="node-1", connected=LINK)
    assert desired.problem is not None
    assert "route table" in desired.problem
    assert "source-destination check off" in desired.problem


def test_on_the_hub_itself_the_router_owns_no_routes() -> None:
    desired = router_routes(hub(node="node-1"), node_name="node-1", connected=LINK)
    assert desired == RouterDesired(
        routes=frozenset(), hub="node-1", notes=("this node is the hub",)
    )


@pytest.mark.parametrize(
    ("gateway", "connected", "holder"),
    [
        ("10.240.0.4", ("10.0.0.0/8", "10.240.0.0/16"), "10.240.0.0/16"),
        ("10.240.0.4", ("192.0.2.0/24",), None),
        ("10.240.0.4", ("fd00::/8",), None),
    ],
)
def test_on_link_is_the_most_specific_connected_network_holding_the_gateway(
    gateway: str, connected: tuple[str, ...], holder: str | None
) -> None:
    found = on_link(ip(gateway), nets(*connected))
    assert (str(found) if found else None) == holder


# -- plan_gateway_routes ------------------------------------------------------------------
A = route("100.96.0.0/24", "10.240.0.4")
B = route("10.244.128.0/17", "10.240.0.4")


@pytest.mark.parametrize(
    ("desired", "observed", "ops"),
    [
        ({A, B}, set(), [AddGatewayRoute(B), AddGatewayRoute(A)]),
        ({A}, {A}, []),
        ({A}, {A, B}, [RemoveGatewayRoute(B)]),
        (
            {route("100.96.0.0/24", "10.240.0.9")},
            {A},
            [ChangeGateway(A.network, ip("10.240.0.4"), ip("10.240.0.9"))],
        ),
        (
            {A},
            {A, route("100.96.0.0/24", "10.240.0.9")},
            [RemoveGatewayRoute(route("100.96.0.0/24", "10.240.0.9"))],
        ),
        (set(), {A}, [RemoveGatewayRoute(A)]),
        (None, {A}, []),
    ],
    ids=[
        "adds-in-order",
        "nothing-changed-writes-nothing",
        "a-prefix-no-longer-wanted-goes",
        "a-new-gateway-changes-in-place",
        "a-duplicate-of-ours-goes",
        "empty-removes-ours",
        "unknown-leaves-all",
    ],
)
def test_the_route_diff_is_the_fewest_operations(
    desired: set[GatewayRoute] | None, observed: set[GatewayRoute], ops: list[GatewayOperation]
) -> None:
    assert (
        list(
            plan_gateway_routes(
                None if desired is None else frozenset(desired), frozenset(observed)
            )
        )
        == ops
    )


def test_applying_the_diff_then_diffing_again_gives_nothing() -> None:
    observed = {A, route("10.0.0.0/8", "10.240.0.1")}
    desired = frozenset({route("100.96.0.0/24", "10.240.0.9"), B})
    for op in plan_gateway_routes(desired, frozenset(observed)):
        if isinstance(op, AddGatewayRoute):
            observed.add(op.route)
        elif isinstance(op, RemoveGatewayRoute):
            observed.discard(op.route)
        else:
            observed = {r for r in observed if r.network != op.network} | {
                GatewayRoute(op.network, op.new)
            }
    assert observed == desired
    assert plan_gateway_routes(desired, frozenset(observed)) == ()


def test_ipv4_and_ipv6_routes_diff_together() -> None:
    v6 = route("fd00:96::/64", "fd00::4")
    assert plan_gateway_routes(frozenset({A, v6}), frozenset()) == (
        AddGatewayRoute(A),
        AddGatewayRoute(v6),
    )


# -- the announcement's router fields -------------------------------------------------------
def test_the_router_fields_round_trip_and_are_written_only_when_set() -> None:
    full = hub(prefixes=("10.244.128.0/17", "100.96.0.0/24")).model_copy(
        update={"allowed_ips": nets("100.96.0.0/24")}
    )
    assert decode(encode([full])) == (full,)
    entry = json.loads(encode([full])[DATA_KEY])["hubs"][0]
    assert entry["internalIP"] == "10.240.0.4"
    assert entry["routerPrefixes"] == ["10.244.128.0/17", "100.96.0.0/24"]
    bare = hub(internal=None)
    assert set(json.loads(encode([bare])[DATA_KEY])["hubs"][0]) == {
        "node",
        "publicKey",
        "endpoint",
        "allowedIPs",
    }
    assert decode(encode([bare])) == (bare,)


@pytest.mark.parametrize(
    ("field", "value", "fault"),
    [
        ("internalIP", "10.240.0.300", "'internalIP' '10.240.0.300' is not an IP address"),
        ("internalIP", 7, "'internalIP' is not a string"),
        ("routerPrefixes", "100.96.0.0/24", "'routerPrefixes' is not a list of CIDRs"),
        ("routerPrefixes", ["100.96.0.1/24"], "has host bits set"),
    ],
)
def test_a_malformed_router_field_refuses_the_announcement(
    field: str, value: object, fault: str
) -> None:
    entry = json.loads(encode([hub()])[DATA_KEY])["hubs"][0]
    entry[field] = value
    data = {DATA_KEY: json.dumps({"version": 1, "hubs": [entry]})}
    with pytest.raises(AnnouncementError, match="hub 'hub-1'") as refused:
        decode(data)
    assert fault in str(refused.value)

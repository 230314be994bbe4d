"""Route safety: what no allowed-ips may cover, on the hub and on the spoke."""

from __future__ import annotations

import ipaddress

import pytest

from tests.unit.builders import ep, iface, net, nets, priv, pub, record
from wgkube.desired.hub import hub_state
from wgkube.desired.model import CONFLICT, DeviceSpec
from wgkube.desired.protected import (
    HostAddress,
    HostRoute,
    Protected,
    ProtectedIndex,
    api_server_protected,
    host_protected,
    outside_pool,
)
from wgkube.desired.spoke import spoke_state, unsafe_routes
from wgkube.domain.annotations import HubRecord
from wgkube.kube.address import api_server_addresses

ip = ipaddress.ip_address

HUB = DeviceSpec(name="wg0", private_key=priv("hub"), addresses=(iface("100.96.0.1/24"),))

# The hub's host as the adapter reads it: eth0 on 192.168.10.0/24, a default gateway,
# a static route through a second router, the WireGuard device and one route of ours.
ADDRESSES = [
    HostAddress(iface("192.168.10.5/24"), "eth0"),
    HostAddress(iface("fd10::5/64"), "eth0"),
    HostAddress(iface("100.96.0.1/24"), "wg0"),
]
ROUTES = [
    HostRoute(net("0.0.0.0/0"), "eth0", 16, (ip("192.168.10.1"),)),
    HostRoute(net("192.168.10.0/24"), "eth0", 2),
    HostRoute(net("fd10::/64"), "eth0", 2),
    HostRoute(net("172.20.0.0/16"), "eth0", 4, (ip("192.168.10.254"),)),
    HostRoute(net("100.96.0.0/24"), "wg0", 2),
    HostRoute(net("10.44.0.0/24"), "wg0", 87),
    HostRoute(net("10.45.0.0/24"), "eth1", 87),
    HostRoute(net("0.0.0.0/0"), "ppp0", 4),
    HostRoute(net("172.30.0.0/16"), "eth0", 4, (ip("192.168.10.253"),), table=100),
]
HOST = host_protected(ADDRESSES, ROUTES, wireguard="wg0", own_protocol=87)
API = api_server_protected([ip("10.0.0.1")])
PROTECTED = (*API, *HOST)


def test_the_host_set_holds_addresses_gateways_and_connected_networks_but_nothing_of_ours() -> None:
    assert {p.network for p in HOST} == {
        net("192.168.10.5/32"),
        net("fd10::5/128"),
        net("192.168.10.1/32"),
        net("192.168.10.0/24"),
        net("fd10::/64"),
        net("192.168.10.254/32"),
        net("172.20.0.0/16"),
        net("192.168.10.253/32"),
    }
    whats = {p.what for p in HOST}
    assert "the default gateway 192.168.10.1 (dev eth0)" in whats
    assert "the gateway 192.168.10.254 of the route 172.20.0.0/16 (dev eth0)" in whats
    assert "the directly connected network 192.168.10.0/24 (dev eth0)" in whats
    assert "the node's own address 192.168.10.5 (dev eth0)" in whats


def rejection_of(
    allowed: tuple[str, ...],
    *,
    others: tuple[tuple[str, str | None], ...] = (),
    learned: dict[int, str] | None = None,
    peer_cidrs: tuple[str, ...] | None = None,
) -> str | None:
    """The message for peer `x` (created last) or None when it is accepted; the other
    peers are older and must always be accepted."""
    records = [
        record(f"o{i}", 100 + i, own, created=i, endpoint=endpoint)
        for i, (own, endpoint) in enumerate(others)
    ]
    records.append(record("x", 1, *allowed, created=99, endpoint="198.51.100.20:51820"))
    state, rejections = hub_state(
        HUB,
        records,
        protected=PROTECTED,
        learned_endpoints={pub(k): ep(v) for k, v in (learned or {}).items()},
        peer_cidrs=nets(*peer_cidrs) if peer_cidrs is not None else None,
    )
    assert state.peers is not None
    assert {r.node for r in rejections} <= {"x"}, rejections
    assert all(r.reason == CONFLICT for r in rejections)
    for i in range(len(others)):
        assert pub(100 + i) in state.peers
    if rejections:
        assert pub(1) not in state.peers
        assert not state.routes & set(nets(*allowed)), "a rejected peer gets no route"
        return rejections[0].message
    return None


@pytest.mark.parametrize(
    ("allowed", "message"),
    [
        (("10.0.0.0/8",), "allowed-ips 10.0.0.0/8 covers the API server address 10.0.0.1"),
        (("10.0.0.1/32",), "allowed-ips 10.0.0.1/32 covers the API server address 10.0.0.1"),
        (
            ("192.168.10.0/24",),
            "allowed-ips 192.168.10.0/24 covers the directly connected network "
            "192.168.10.0/24 (dev eth0)",
        ),
        (
            ("192.168.10.0/30",),
            "allowed-ips 192.168.10.0/30 covers the default gateway 192.168.10.1 (dev eth0)",
        ),
        (
            ("192.168.10.128/28",),
            "allowed-ips 192.168.10.128/28 overlaps the directly connected network "
            "192.168.10.0/24 (dev eth0)",
        ),
        (
            ("192.168.0.0/16",),
            "allowed-ips 192.168.0.0/16 covers the directly connected network "
            "192.168.10.0/24 (dev eth0)",
        ),
        (
            ("192.168.10.5/32",),
            "allowed-ips 192.168.10.5/32 covers the node's own address 192.168.10.5 (dev eth0)",
        ),
        (
            ("192.168.10.254/32",),
            "allowed-ips 192.168.10.254/32 covers the gateway 192.168.10.254 of the route "
            "172.20.0.0/16 (dev eth0)",
        ),
        (
            ("10.9.0.0/24", "fd10:0:0:0:1::/80"),
            "allowed-ips fd10::1:0:0:0/80 overlaps the directly connected network "
            "fd10::/64 (dev eth0)",
        ),
        (
            ("172.20.0.0/16",),
            "allowed-ips 172.20.0.0/16 is the route 172.20.0.0/16 via 192.168.10.254 "
            "(dev eth0, proto static), which is not wg-kube's",
        ),
        (
            ("198.51.100.20/32",),
            "allowed-ips 198.51.100.20/32 covers the endpoint 198.51.100.20 of node 'x'",
        ),
    ],
)
def test_allowed_ips_covering_what_the_hub_needs_outside_the_tunnel_are_refused(
    allowed: tuple[str, ...], message: str
) -> None:
    assert rejection_of(allowed) == message


def test_a_peer_claiming_another_peers_published_endpoint_is_refused_however_old() -> None:
    assert rejection_of(("203.0.113.0/24",), others=(("10.1.0.0/24", "203.0.113.7:51820"),)) == (
        "allowed-ips 203.0.113.0/24 covers the endpoint 203.0.113.7 of node 'o0'"
    )


def test_a_peer_claiming_an_endpoint_the_hub_learned_is_refused_naming_the_node() -> None:
    message = rejection_of(
        ("203.0.113.9/32",), others=(("10.1.0.0/24", None),), learned={100: "203.0.113.9:4242"}
    )
    assert (
        message
        == "allowed-ips 203.0.113.9/32 covers the endpoint 203.0.113.9 learned from node 'o0'"
    )


def test_prefixes_beside_the_protected_ones_are_accepted() -> None:
    beside = (
        "10.0.0.2/31",
        "10.0.0.0/32",
        "192.168.11.0/24",
        "172.20.1.0/24",
        "172.30.0.0/16",
        "10.44.0.0/24",
    )
    assert rejection_of(beside) is None


@pytest.mark.parametrize(
    ("allowed", "accepted"),
    [
        (("100.96.0.7/32", "10.244.7.0/24"), True),
        (("10.244.0.0/16",), True),
        (("10.245.0.0/24",), False),
        (("10.0.0.0/8",), False),
        (("fd00::/64",), False),
    ],
)
def test_peer_cidrs_confine_allowed_ips_to_a_pool(allowed: tuple[str, ...], accepted: bool) -> None:
    message = rejection_of(allowed, peer_cidrs=("100.96.0.0/24", "10.244.0.0/16"))
    if accepted:
        assert message is None
    else:
        assert message is not None
        assert message.endswith("is outside --peer-cidrs 100.96.0.0/24,10.244.0.0/16")


def test_a_pool_peer_still_may_not_cover_protected_addresses() -> None:
    message = rejection_of(("10.0.0.0/24",), peer_cidrs=("10.0.0.0/16",))
    assert message == "allowed-ips 10.0.0.0/24 covers the API server address 10.0.0.1"


def test_without_a_protected_set_only_published_endpoints_are_guarded() -> None:
    _, rejections = hub_state(HUB, [record("a", 1, "10.0.0.0/8", endpoint="10.1.2.3")])
    assert [r.message for r in rejections] == [
        "allowed-ips 10.0.0.0/8 covers the endpoint 10.1.2.3 of node 'a'"
    ]


# -- the index ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prefix", "hit"),
    [
        ("10.0.0.0/31", "a"),
        ("10.0.0.2/31", None),
        ("9.255.255.255/32", None),
        ("10.0.0.0/8", "a"),
        ("172.16.5.0/24", "n"),
        ("172.16.0.0/16", "n"),
        ("0.0.0.0/1", "a"),
        ("128.0.0.0/1", "n"),
        ("172.0.0.0/8", "n"),
        ("172.17.0.0/16", None),
        ("2001:db8::1/128", "a6"),
        ("2001:db8::/126", "a6"),
        ("2001:db8::2/127", None),
    ],
)
def test_the_index_finds_an_address_inside_or_a_network_overlapping(
    prefix: str, hit: str | None
) -> None:
    index = ProtectedIndex(
        [
            Protected.address(ip("10.0.0.1"), "a"),
            Protected.address(ip("2001:db8::1"), "a6"),
            Protected(net("172.16.0.0/16"), "n"),
        ]
    )
    found = index.covered(net(prefix))
    assert (found.what if found else None) == hit


def test_outside_pool_names_the_first_prefix_in_no_pool_network() -> None:
    pool = nets("10.0.0.0/16", "fd00::/48")
    assert outside_pool(nets("10.0.1.0/24", "fd00:0:0:1::/64"), pool) is None
    assert outside_pool(nets("10.0.1.0/24", "10.1.0.0/24"), pool) == net("10.1.0.0/24")
    assert outside_pool(nets("10.0.0.0/8"), pool) == net("10.0.0.0/8")


# -- the spoke ------------------------------------------------------------------------------
SPOKE = DeviceSpec(name="wg0", private_key=priv("spoke"), addresses=(iface("100.96.0.2/24"),))


def hub(*allowed: str, endpoint: str | None = "198.51.100.1:51820") -> HubRecord:
    return HubRecord(
        node="hub",
        public_key=pub("hub"),
        endpoint=ep(endpoint) if endpoint else None,
        allowed_ips=nets(*allowed),
    )


@pytest.mark.parametrize(
    ("allowed", "routes", "skipped"),
    [
        (("100.96.1.0/24", "10.0.0.0/16"), ("100.96.1.0/24", "10.0.0.0/16"), ()),
        (("0.0.0.0/0", "::/0", "100.96.1.0/24"), ("100.96.1.0/24",), ()),
        (("0.0.0.0/1", "128.0.0.0/1"), ("0.0.0.0/1",), ("128.0.0.0/1",)),
        (("198.51.100.0/24", "100.96.1.0/24"), ("100.96.1.0/24",), ("198.51.100.0/24",)),
        (("198.51.100.1/32",), (), ("198.51.100.1/32",)),
        (("198.51.100.2/31",), ("198.51.100.2/31",), ()),
        (("192.0.2.0/24", "192.0.3.0/24"), ("192.0.3.0/24",), ("192.0.2.0/24",)),
        (("100.96.0.0/24", "100.96.1.0/24"), ("100.96.1.0/24",), ()),
    ],
    ids=["plain", "default", "halves", "endpoint-subnet", "endpoint", "beside", "api", "own-net"],
)
def test_the_spoke_routes_nothing_that_holds_the_hubs_endpoint_or_the_api_server(
    allowed: tuple[str, ...], routes: tuple[str, ...], skipped: tuple[str, ...]
) -> None:
    record_ = hub(*allowed)
    api = [ip("192.0.2.10")]
    state = spoke_state(SPOKE, record_, api_server=api)
    assert state.routes == frozenset(nets(*routes))
    assert state.peers is not None
    # WireGuard keeps every prefix: only the route, which steers this node, is left out.
    assert state.peers[pub("hub")].allowed_ips == tuple(sorted(nets(*allowed), key=_order))
    assert set(unsafe_routes(record_, api_server=api)) == set(nets(*skipped))


def _order(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def test_a_skipped_route_is_explained_naming_what_it_covers() -> None:
    record_ = hub("0.0.0.0/1", "128.0.0.0/1")
    assert unsafe_routes(record_, api_server=[ip("10.0.0.1")]) == {
        net("0.0.0.0/1"): "hub hub: no route for 0.0.0.0/1: it covers the API server address "
        "10.0.0.1, which must stay reachable outside the tunnel",
        net("128.0.0.0/1"): "hub hub: no route for 128.0.0.0/1: it covers the hub's endpoint "
        "198.51.100.1, which must stay reachable outside the tunnel",
    }


def test_the_override_of_the_hubs_allowed_ips_is_guarded_too() -> None:
    record_ = hub("100.96.1.0/24")
    override = nets("198.51.0.0/16", "10.9.0.0/24")
    state = spoke_state(SPOKE, record_, hub_allowed_ips=override)
    assert state.routes == frozenset(nets("10.9.0.0/24"))
    assert set(unsafe_routes(record_, hub_allowed_ips=override)) == {net("198.51.0.0/16")}


def test_a_hub_without_an_endpoint_loses_no_route_to_it() -> None:
    state = spoke_state(SPOKE, hub("198.51.100.0/24", endpoint=None))
    assert state.routes == frozenset(nets("198.51.100.0/24"))
    assert unsafe_routes(None) == {}


# -- the API server's address ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("https://10.0.0.1:6443", ("10.0.0.1",)),
        ("https://10.0.0.1", ("10.0.0.1",)),
        ("https://[2001:db8::1]:6443", ("2001:db8::1",)),
        ("10.96.0.1:443", ("10.96.0.1",)),
        ("https://localhost:6443", ("127.0.0.1",)),
        ("", ()),
    ],
)
async def test_the_api_server_address_comes_from_the_configured_host(
    url: str, addresses: tuple[str, ...]
) -> None:
    found = await api_server_addresses(url)
    assert {str(a) for a in found if a.version == 4 or url.startswith("https://[")} == set(
        addresses
    )


def test_an_endpoint_both_published_and_learned_is_named_as_published() -> None:
    message = rejection_of(
        ("203.0.113.0/24",),
        others=(("10.1.0.0/24", "203.0.113.7:51820"),),
        learned={100: "203.0.113.7:51820"},
    )
    assert message == "allowed-ips 203.0.113.0/24 covers the endpoint 203.0.113.7 of node 'o0'"

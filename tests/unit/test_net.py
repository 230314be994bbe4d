"""Endpoints, CIDR lists and interface addresses as WireGuard understands them."""

from __future__ import annotations

import gc
import ipaddress
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

import wgkube.domain.net as net_module
from tests.unit.builders import nets
from wgkube.domain.errors import InvalidCIDR, InvalidEndpoint, InvalidInput
from wgkube.domain.net import (
    DEFAULT_PORT,
    Endpoint,
    covers,
    format_networks,
    normalize_networks,
    overlap,
    parse_interface,
    parse_network,
    parse_networks,
    shared_network,
    span,
)

# -- endpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        pytest.param("192.0.2.1", "192.0.2.1", DEFAULT_PORT, id="bare-v4"),
        pytest.param("192.0.2.1:51821", "192.0.2.1", 51821, id="v4-port"),
        pytest.param("192.0.2.1:1", "192.0.2.1", 1, id="v4-port-1"),
        pytest.param("192.0.2.1:65535", "192.0.2.1", 65535, id="v4-port-65535"),
        pytest.param("  192.0.2.1:80 \n", "192.0.2.1", 80, id="whitespace-around"),
        pytest.param("[2001:db8::1]:51821", "2001:db8::1", 51821, id="bracketed-v6-port"),
        pytest.param("[2001:db8::1]", "2001:db8::1", DEFAULT_PORT, id="bracketed-v6"),
        pytest.param("2001:db8::1", "2001:db8::1", DEFAULT_PORT, id="bare-v6"),
        pytest.param("::1", "::1", DEFAULT_PORT, id="bare-v6-loopback"),
        pytest.param("[::ffff:192.0.2.1]:80", "::ffff:192.0.2.1", 80, id="v4-mapped-v6"),
        pytest.param("[2001:0db8:0000::0001]:80", "2001:db8::1", 80, id="v6-uncompressed"),
    ],
)
def test_an_endpoint_parses_from_an_ip_literal_and_an_optional_port(
    text: str, host: str, port: int
) -> None:
    assert Endpoint.parse(text) == Endpoint(ipaddress.ip_address(host), port)


def test_a_bare_address_takes_the_given_default_port() -> None:
    assert Endpoint.parse("192.0.2.1", default_port=1234).port == 1234
    assert Endpoint.parse("[2001:db8::1]", default_port=1234).port == 1234
    assert Endpoint.parse("192.0.2.1:80", default_port=1234).port == 80


def test_a_bare_ipv6_address_with_a_port_glued_on_is_read_as_an_address() -> None:
    # This is why a port on an IPv6 endpoint needs brackets: `2001:db8::1:80` is an address.
    assert Endpoint.parse("2001:db8::1:80") == Endpoint(
        ipaddress.ip_address("2001:db8::1:80"), DEFAULT_PORT
    )


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("  \t", "empty", id="only-whitespace"),
        pytest.param("example.com", "DNS names are not accepted", id="hostname"),
        pytest.param("example.com:51820", "DNS names are not accepted", id="hostname-port"),
        pytest.param("localhost:51820", "DNS names are not accepted", id="localhost"),
        pytest.param("[example.com]:80", "not an IP address", id="bracketed-hostname"),
        pytest.param("192.0.2.256:80", "not an IP address", id="v4-octet-too-big"),
        pytest.param("192.0.2:80", "not an IP address", id="v4-three-octets"),
        pytest.param("192.0.2.1 :80", "not an IP address", id="space-before-colon"),
        pytest.param("192.0.2.1:80:90", "not an IP address", id="two-ports"),
        pytest.param("192.0.2.1:0", "outside 1-65535", id="port-0"),
        pytest.param("192.0.2.1:65536", "outside 1-65535", id="port-65536"),
        pytest.param("192.0.2.1:99999999999", "outside 1-65535", id="port-huge"),
        pytest.param("192.0.2.1:abc", "not a number", id="port-letters"),
        pytest.param("192.0.2.1:", "not a number", id="port-empty"),
        pytest.param("192.0.2.1:-1", "not a number", id="port-negative"),
        pytest.param("192.0.2.1:+80", "not a number", id="port-plus-sign"),
        pytest.param("192.0.2.1:0x50", "not a number", id="port-hex"),
        pytest.param("192.0.2.1: 80", "not a number", id="port-leading-space"),
        pytest.param("192.0.2.1:٨٠", "not a number", id="port-non-ascii-digits"),
        pytest.param(":51820", "not an IP address", id="no-host"),
        pytest.param("[192.0.2.1]:80", "brackets are only for IPv6", id="brackets-on-v4"),
        pytest.param("[192.0.2.1]", "brackets are only for IPv6", id="brackets-on-bare-v4"),
        pytest.param("[2001:db8::1:80", "without a closing", id="missing-close-bracket"),
        pytest.param("[2001:db8::1", "without a closing", id="missing-close-bracket-no-port"),
        pytest.param("[2001:db8::1]80", "expected ':port'", id="junk-after-bracket"),
        pytest.param("[2001:db8::1]:", "not a number", id="bracketed-empty-port"),
        pytest.param("[2001:db8::1]:0", "outside 1-65535", id="bracketed-port-0"),
        pytest.param("[2001:db8::1]:65536", "outside 1-65535", id="bracketed-port-65536"),
        pytest.param("[]:80", "not an IP address", id="empty-brackets"),
        pytest.param("2001:db8::g", "not an IP address", id="bad-v6"),
    ],
)
def test_a_malformed_endpoint_is_refused_with_the_fault_named(text: str, fault: str) -> None:
    with pytest.raises(InvalidEndpoint, match=fault):
        Endpoint.parse(text)


def test_an_endpoint_error_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        Endpoint.parse("example.com")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("192.0.2.1", "192.0.2.1:51820", id="v4-default-port"),
        pytest.param("192.0.2.1:80", "192.0.2.1:80", id="v4"),
        pytest.param("2001:db8::1", "[2001:db8::1]:51820", id="bare-v6"),
        pytest.param("[2001:0db8::0001]:80", "[2001:db8::1]:80", id="v6-compressed"),
    ],
)
def test_an_endpoint_shows_as_wireguard_writes_it_and_parses_back(text: str, shown: str) -> None:
    endpoint = Endpoint.parse(text)
    assert str(endpoint) == shown
    assert Endpoint.parse(str(endpoint)) == endpoint


# -- address lists ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("10.0.1.0/24", ["10.0.1.0/24"], id="one"),
        pytest.param("10.0.1.0/24,10.0.2.0/24", ["10.0.1.0/24", "10.0.2.0/24"], id="comma"),
        pytest.param("10.0.1.0/24, 10.0.2.0/24", ["10.0.1.0/24", "10.0.2.0/24"], id="comma-space"),
        pytest.param("10.0.1.0/24 10.0.2.0/24", ["10.0.1.0/24", "10.0.2.0/24"], id="space"),
        pytest.param(
            " 10.0.2.0/24 ,\n\t10.0.1.0/24 ", ["10.0.1.0/24", "10.0.2.0/24"], id="messy-space"
        ),
        pytest.param("10.0.2.0/24,10.0.1.0/24", ["10.0.1.0/24", "10.0.2.0/24"], id="sorted"),
        pytest.param(
            "10.0.0.10/32,10.0.0.9/32", ["10.0.0.9/32", "10.0.0.10/32"], id="numeric-not-text"
        ),
        pytest.param("10.0.0.0/16,10.0.0.0/8", ["10.0.0.0/8", "10.0.0.0/16"], id="shorter-first"),
        pytest.param("10.0.1.0/24,10.0.1.0/24", ["10.0.1.0/24"], id="dedupe"),
        pytest.param("10.0.1.0/24, 10.0.1.0/24 ,10.0.1.0/24", ["10.0.1.0/24"], id="dedupe-3"),
        pytest.param("fd00::/64,10.0.0.0/8", ["10.0.0.0/8", "fd00::/64"], id="v4-before-v6"),
        pytest.param("10.0.0.7", ["10.0.0.7/32"], id="bare-v4-is-host-route"),
        pytest.param("fd00::7", ["fd00::7/128"], id="bare-v6-is-host-route"),
        pytest.param("10.0.0.7,10.0.0.7/32", ["10.0.0.7/32"], id="bare-and-slash32-dedupe"),
        pytest.param("0.0.0.0/0,::/0", ["0.0.0.0/0", "::/0"], id="default-routes"),
        pytest.param("10.0.1.0/24,", ["10.0.1.0/24"], id="trailing-comma-ignored"),
        pytest.param("10.0.0.0/255.0.0.0", ["10.0.0.0/8"], id="netmask-form"),
    ],
)
def test_an_address_list_parses_sorted_and_deduplicated(text: str, expected: list[str]) -> None:
    assert parse_networks(text) == nets(*expected)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        pytest.param("", "the list is empty", id="empty"),
        pytest.param("   ", "the list is empty", id="only-whitespace"),
        pytest.param(",", "the list is empty", id="only-comma"),
        pytest.param(" , ,, ", "the list is empty", id="only-commas"),
        pytest.param("garbage", "'garbage' is not a CIDR", id="garbage"),
        pytest.param("10.0.0.0/8,garbage", "'garbage' is not a CIDR", id="one-bad-item"),
        pytest.param("10.0.0.0/8;10.1.0.0/16", "is not a CIDR", id="semicolon"),
        pytest.param("10.0.0.0/33", "is not a CIDR", id="prefix-33"),
        pytest.param("fd00::/129", "is not a CIDR", id="prefix-129"),
        pytest.param("10.0.0.0/-1", "is not a CIDR", id="prefix-negative"),
        pytest.param("10.0.0.0/", "is not a CIDR", id="prefix-empty"),
        pytest.param("10.0.0/8", "is not a CIDR", id="three-octets"),
        pytest.param("300.0.0.0/8", "is not a CIDR", id="octet-too-big"),
        pytest.param("example.com/24", "is not a CIDR", id="hostname"),
        pytest.param("10.0.0.0/8/8", "is not a CIDR", id="two-slashes"),
        pytest.param("10.0.1.7/24", "did you mean 10.0.1.0/24 or 10.0.1.7/32", id="v4-host-bits"),
        pytest.param(
            "10.0.0.0/8, 192.168.1.1/16",
            "did you mean 192.168.0.0/16 or 192.168.1.1/32",
            id="host-bits-in-second-item",
        ),
        pytest.param("fd00::1/64", "did you mean fd00::/64 or fd00::1/128", id="v6-host-bits"),
    ],
)
def test_a_malformed_address_list_is_refused_with_the_fault_named(text: str, fault: str) -> None:
    with pytest.raises(InvalidCIDR, match=fault):
        parse_networks(text)


def test_a_single_empty_entry_is_refused() -> None:
    with pytest.raises(InvalidCIDR, match="empty entry"):
        parse_network("  ")


def test_a_cidr_error_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        parse_networks("10.0.1.7/24")


def test_a_formatted_list_parses_back_to_itself() -> None:
    parsed = parse_networks("fd00::/64, 10.0.2.0/24 10.0.1.0/24,10.0.0.7")
    assert format_networks(parsed) == "10.0.0.7/32,10.0.1.0/24,10.0.2.0/24,fd00::/64"
    assert parse_networks(format_networks(parsed)) == parsed


def test_normalizing_is_idempotent_and_ignores_input_order() -> None:
    items = list(nets("fd00::/64", "10.0.2.0/24", "10.0.1.0/24", "10.0.1.0/24", "::/0"))
    once = normalize_networks(items)
    assert once == nets("10.0.1.0/24", "10.0.2.0/24", "::/0", "fd00::/64")
    assert normalize_networks(reversed(items)) == once
    assert normalize_networks(once) == once


# -- interface addresses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ip", "network"),
    [
        pytest.param("100.96.0.1/32", "100.96.0.1", "100.96.0.1/32", id="host"),
        pytest.param("100.96.0.1/24", "100.96.0.1", "100.96.0.0/24", id="host-bits-allowed"),
        pytest.param(" 100.96.0.1/24\n", "100.96.0.1", "100.96.0.0/24", id="whitespace"),
        pytest.param("fd00::1/64", "fd00::1", "fd00::/64", id="v6"),
    ],
)
def test_an_interface_address_keeps_the_host_and_its_network(
    text: str, ip: str, network: str
) -> None:
    address = parse_interface(text)
    assert address.ip == ipaddress.ip_address(ip)
    assert address.network == ipaddress.ip_network(network)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        pytest.param("100.96.0.1", "a prefix length is required", id="no-prefix"),
        pytest.param("fd00::1", "a prefix length is required", id="v6-no-prefix"),
        pytest.param("", "a prefix length is required", id="empty"),
        pytest.param("garbage/24", "is not an interface address", id="garbage"),
        pytest.param("100.96.0.1/33", "is not an interface address", id="prefix-33"),
        pytest.param("100.96.0.256/24", "is not an interface address", id="octet-too-big"),
    ],
)
def test_a_malformed_interface_address_is_refused(text: str, fault: str) -> None:
    with pytest.raises(InvalidCIDR, match=fault):
        parse_interface(text)


def networks() -> st.SearchStrategy[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    v4 = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: ipaddress.IPv4Network((t[0], t[1]), strict=False)
    )
    v6 = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: ipaddress.IPv6Network((t[0], t[1]), strict=False)
    )
    return st.one_of(v4, v6)


@given(networks(), networks())
def test_span_covers_and_overlap_agree_with_ipaddress(
    a: ipaddress.IPv4Network | ipaddress.IPv6Network,
    b: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> None:
    assert span(a) == (int(a.network_address), int(a.broadcast_address))
    same = a.version == b.version
    assert covers(a, b) == (same and b.subnet_of(a))  # type: ignore[arg-type]
    assert overlap(a, b) == (same and a.overlaps(b))
    around = a.supernet(new_prefix=max(0, a.prefixlen - 3))
    assert covers(around, a)
    assert overlap(a, around)


def test_span_leaves_the_network_as_it_was() -> None:
    net = ipaddress.ip_network("10.1.2.0/24")
    covers(ipaddress.ip_network("10.0.0.0/8"), net)
    overlap(net, ipaddress.ip_network("10.1.2.128/25"))
    span(net)
    assert "broadcast_address" not in vars(net)
    assert "hostmask" not in vars(net)


def test_a_network_read_twice_is_one_object_while_held() -> None:
    first = parse_network("10.123.4.0/24")
    assert shared_network("10.123.4.0/24") is first
    assert shared_network((bytes([10, 123, 4, 0]), 24)) == first
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None, "the table keeps no network alive"
    assert "10.123.4.0/24" not in net_module._SHARED
    with pytest.raises(ValueError, match="host bits"):
        shared_network("10.123.4.1/24")

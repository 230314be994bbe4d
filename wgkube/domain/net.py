"""Endpoints and address lists as WireGuard understands them."""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

from wgkube.domain.errors import InvalidCIDR, InvalidEndpoint

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_SHARED: weakref.WeakValueDictionary[str | tuple[bytes, int], IPNetwork] = (
    weakref.WeakValueDictionary()
)


def shared_network(value: str | tuple[bytes, int]) -> IPNetwork:
    """`ipaddress.ip_network(value)` (strict), one object per value while anything holds it.

    The hub keeps every peer's prefixes in its registry, its desired state and its cache
    of the kernel, and reads them back from the kernel at every resync: one shared
    object each (~450 B for a /32, with the `hosts` closure ipaddress gives it) instead of
    one per copy, and a read of 10,000 peers makes no new ones. Raises ValueError as
    `ip_network` does.
    """
    net = _SHARED.get(value)
    if net is None:
        net = ipaddress.ip_network(value)
        _SHARED[value] = net
    return net


IPInterface = IPv4Interface | IPv6Interface

DEFAULT_PORT = 51820


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """A UDP endpoint: an IP literal and a port.

    DNS names are refused on purpose: the kernel takes only addresses, and a name
    resolved once at apply time would silently go stale.
    """

    host: IPAddress
    port: int

    @classmethod
    def parse(cls, text: str, *, default_port: int = DEFAULT_PORT) -> Endpoint:
        """Parse `ip`, `ip:port`, `[v6]` or `[v6]:port`; a bare IP takes `default_port`."""
        text = text.strip()
        if not text:
            raise InvalidEndpoint("endpoint is empty")
        host_text: str
        port_text: str | None
        if text.startswith("["):
            close = text.find("]")
            if close < 0:
                raise InvalidEndpoint(f"{text!r}: '[' without a closing ']'")
            host_text, rest = text[1:close], text[close + 1 :]
            if rest and not rest.startswith(":"):
                raise InvalidEndpoint(f"{text!r}: expected ':port' after ']'")
            port_text = rest[1:] if rest else None
        elif text.count(":") == 1:
            host_text, port_text = text.split(":")
        else:
            host_text, port_text = text, None  # a bare IPv4 or IPv6 address
        try:
            host = ipaddress.ip_address(host_text)
        except ValueError:
            raise InvalidEndpoint(
                f"{text!r}: {host_text!r} is not an IP address (DNS names are not accepted)"
            ) from None
        if text.startswith("[") and host.version != 6:
            raise InvalidEndpoint(f"{text!r}: brackets are only for IPv6 addresses")
        port = default_port if port_text is None else _parse_port(port_text, text)
        return cls(host, port)

    def __str__(self) -> str:
        if self.host.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _parse_port(port_text: str, whole: str) -> int:
    # isascii: str.isdigit() and int() also accept non-ASCII (e.g. Arabic-Indic) digits.
    if not (port_text.isascii() and port_text.isdigit()):
        raise InvalidEndpoint(f"{whole!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidEndpoint(f"{whole!r}: port {port} is outside 1-65535")
    return port


def parse_network(text: str) -> IPNetwork:
    """One CIDR; a bare address is a host route (/32 or /128); host bits are an error.

    Host bits are rejected rather than masked: `10.0.1.7/24` is more likely a typo
    for `10.0.1.7/32` than a wish for `10.0.1.0/24`, and the kernel would silently
    keep something other than what the annotation says.

    No IPv6 zone index (`fe80::1%eth0/128`): an allowed IP has no scope, Python would
    drop it silently on the way to the kernel, and wireguard-go refuses it. Forms that
    have one meaning and are written canonically before they reach the kernel (a
    netmask after the slash, an uncompressed IPv6 address) are taken; leading zeros in
    an IPv4 octet, which some tools read as octal, are refused by `ipaddress` itself.
    """
    item = text.strip()
    if not item:
        raise InvalidCIDR("empty entry")
    if "%" in item:
        raise InvalidCIDR(f"{item!r} has an IPv6 zone index ('%'); allowed IPs carry no scope")
    try:
        return shared_network(item)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise InvalidCIDR(f"{item!r} is not a CIDR ({exc})") from None
        raise InvalidCIDR(
            f"{item!r} has host bits set; did you mean {loose} or {item.split('/')[0]}/"
            f"{loose.max_prefixlen}?"
        ) from None


def span(net: IPNetwork) -> tuple[int, int]:
    """The first and last address of `net` as integers.

    Not `broadcast_address`, `hostmask`, `subnet_of` or `overlaps`: those are cached
    properties, and a network the hub keeps (10,000 of them and more) would keep an
    extra address object and a larger `__dict__` for life once asked.
    """
    start = int(net.network_address)
    return start, start | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


def covers(outer: IPNetwork, inner: IPNetwork) -> bool:
    """`inner` lies inside `outer` (or is it): `inner.subnet_of(outer)`, without caching."""
    if outer.version != inner.version or inner.prefixlen < outer.prefixlen:
        return False
    shift = outer.max_prefixlen - outer.prefixlen
    return int(inner.network_address) >> shift == int(outer.network_address) >> shift


def overlap(a: IPNetwork, b: IPNetwork) -> bool:
    """The two share an address (CIDR blocks nest or do not meet): `a.overlaps(b)`."""
    return covers(a, b) or covers(b, a)


def parse_networks(text: str, *, max_items: int | None = None) -> tuple[IPNetwork, ...]:
    """A comma (or whitespace) separated list of CIDRs, de-duplicated and sorted.

    With `max_items`, more distinct networks than that are an error (counted after
    de-duplication, so a repeated entry costs nothing).
    """
    items = [part for chunk in text.split(",") for part in chunk.split()]
    if not items:
        raise InvalidCIDR("the list is empty")
    nets = normalize_networks(parse_network(item) for item in items)
    if max_items is not None and len(nets) > max_items:
        raise InvalidCIDR(f"{len(nets)} prefixes; at most {max_items} are allowed on one peer")
    return nets


def normalize_networks(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Sorted and de-duplicated, IPv4 before IPv6: the one canonical order."""
    return tuple(sorted(set(nets), key=lambda n: (n.version, n.network_address, n.prefixlen)))


def format_networks(nets: Iterable[IPNetwork]) -> str:
    return ",".join(str(n) for n in nets)


def parse_interface(text: str) -> IPInterface:
    """An interface address such as `100.96.0.1/32` or `100.96.0.1/24` (host bits allowed)."""
    item = text.strip()
    try:
        if "/" not in item:
            raise ValueError("a prefix length is required")
        return ipaddress.ip_interface(item)
    except ValueError as exc:
        raise InvalidCIDR(f"{item!r} is not an interface address ({exc})") from None


_NEVER_ON_A_PEER: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), what)
    for net, what in (
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("0.0.0.0/32", "the unspecified address"),
        ("::/128", "the unspecified address"),
        ("224.0.0.0/4", "multicast"),
        ("ff00::/8", "multicast"),
        ("255.255.255.255/32", "the broadcast address"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6 (write the IPv4 address itself)"),
    )
)
"""Address space that no packet to or from a WireGuard peer carries.

A route to it through the tunnel would capture the host's own loopback or multicast
traffic; an IPv4-mapped IPv6 prefix is one that the kernel never matches against an
IPv4 packet, so it would silently not do what it seems to say.
"""


def peer_network_fault(net: IPNetwork) -> str | None:
    """Why `net` cannot be one of a peer's allowed IPs, or None when it can.

    A default route (0.0.0.0/0, ::/0) is refused whatever addresses the hub has: one
    Node must never capture all traffic of a family.
    """
    if net.prefixlen == 0:
        return f"{net} is a default route; a peer may not claim all traffic of a family"
    for special, what in _NEVER_ON_A_PEER:
        if covers(special, net):
            return f"{net} is {what} address space, never routed to a WireGuard peer"
    return None


def endpoint_fault(endpoint: Endpoint) -> str | None:
    """Why a published endpoint cannot be dialled, or None when it can.

    `Endpoint.parse` reads any IP literal (the kernel reports what it learned, even a
    loopback source in a test); a value someone publishes for others to dial must be a
    unicast address that means the same thing on every host.
    """
    host = endpoint.host
    if isinstance(host, IPv6Address):
        if host.scope_id:
            return f"{endpoint}: an IPv6 zone index ('%{host.scope_id}') means nothing elsewhere"
        if host.ipv4_mapped is not None:
            return f"{endpoint}: IPv4-mapped IPv6; write the IPv4 address {host.ipv4_mapped}"
    if host.is_unspecified:
        return f"{endpoint}: the unspecified address cannot be dialled"
    if host.is_loopback:
        return f"{endpoint}: a loopback address is this host itself"
    if host.is_multicast:
        return f"{endpoint}: a multicast address is not one peer"
    if host == IPv4Address("255.255.255.255"):
        return f"{endpoint}: the broadcast address is not one peer"
    return None

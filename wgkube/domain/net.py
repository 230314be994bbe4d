"""Endpoints and address lists as WireGuard understands them."""

from __future__ import annotations

import ipaddress
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
    """
    item = text.strip()
    if not item:
        raise InvalidCIDR("empty entry")
    try:
        return ipaddress.ip_network(item, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise InvalidCIDR(f"{item!r} is not a CIDR ({exc})") from None
        raise InvalidCIDR(
            f"{item!r} has host bits set; did you mean {loose} or {item.split('/')[0]}/"
            f"{loose.max_prefixlen}?"
        ) from None


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """A comma (or whitespace) separated list of CIDRs, de-duplicated and sorted."""
    items = [part for chunk in text.split(",") for part in chunk.split()]
    if not items:
        raise InvalidCIDR("the list is empty")
    return normalize_networks(parse_network(item) for item in items)


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

"""Addresses and networks that no allowed-ips may cover: the node's own way to the world.

A route into the tunnel for a prefix that holds the API server, a peer's endpoint, the
node's gateway or one of its networks would carry the node's own underlay traffic into
WireGuard: the tunnel's packets would loop into the tunnel and the node would cut itself
off. These pure functions build that set from what the adapters read and answer, for a
prefix, what it would capture.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from wgkube.domain.net import IPAddress, IPInterface, IPNetwork, covers, overlap, span

PROTOCOL_NAMES = {
    0: "unspec",
    1: "redirect",
    2: "kernel",
    3: "boot",
    4: "static",
    8: "gated",
    9: "ra",
    11: "zebra",
    12: "bird",
    16: "dhcp",
    18: "keepalived",
    42: "babel",
    186: "bgp",
    187: "isis",
    188: "ospf",
    189: "rip",
}
"""iproute2's names (/etc/iproute2/rt_protos), so a conflict reads as `ip route` shows it."""

MAIN_TABLE = 254


@dataclass(frozen=True, slots=True)
class Protected:
    """One address (a /32 or /128) or network, and what it is, said for a message."""

    network: IPNetwork
    what: str
    """A noun phrase: "the API server address 10.0.0.1"."""
    exact: bool = False
    """Only a prefix equal to `network` is refused (another owner's route: a route of
    ours to the same destination would collide with it; a narrower one would not)."""

    @classmethod
    def address(cls, address: IPAddress, what: str) -> Protected:
        return cls(ipaddress.ip_network(address), what)

    @property
    def is_address(self) -> bool:
        return self.network.prefixlen == self.network.max_prefixlen


@dataclass(frozen=True, slots=True)
class HostAddress:
    """An address on one of the node's interfaces, as the kernel reports it."""

    interface: IPInterface
    device: str


@dataclass(frozen=True, slots=True)
class HostRoute:
    """A route in the node's routing tables (the local table excluded), as read."""

    network: IPNetwork
    device: str
    protocol: int
    gateways: tuple[IPAddress, ...] = ()
    table: int = MAIN_TABLE


def host_protected(
    addresses: Iterable[HostAddress],
    routes: Iterable[HostRoute],
    *,
    wireguard: str,
    own_protocol: int,
    table: int = MAIN_TABLE,
) -> tuple[Protected, ...]:
    """The node's own addresses, its gateways and its directly connected networks, and
    the exact prefixes of other owners' routes through a gateway in `table` (where ours go).

    The WireGuard interface is left out (its addresses are claimed separately, and a
    connected route of its own address is the tunnel itself), and so are the routes
    wg-kube made (`own_protocol`): they are the peers' prefixes, not the host's.
    A connected default route (a point-to-point uplink) is no network to protect: it
    would cover everything; its gateway-less uplink is protected by its address.
    """
    out: list[Protected] = []
    for a in addresses:
        if a.device != wireguard:
            ip = a.interface.ip
            out.append(Protected.address(ip, f"the node's own address {ip} (dev {a.device})"))
    for r in routes:
        if r.device == wireguard or r.protocol == own_protocol:
            continue
        for gw in r.gateways:
            what = (
                f"the default gateway {gw}"
                if r.network.prefixlen == 0
                else f"the gateway {gw} of the route {r.network}"
            )
            out.append(Protected.address(gw, f"{what} (dev {r.device})"))
        if r.gateways and r.network.prefixlen > 0 and r.table == table:
            proto = PROTOCOL_NAMES.get(r.protocol, str(r.protocol))
            via = " via " + ",".join(map(str, r.gateways))
            out.append(
                Protected(
                    r.network,
                    f"the route {r.network}{via} (dev {r.device}, proto {proto}), "
                    "which is not wg-kube's",
                    exact=True,
                )
            )
        if not r.gateways and r.network.prefixlen > 0:
            out.append(
                Protected(r.network, f"the directly connected network {r.network} (dev {r.device})")
            )
    return tuple(dict.fromkeys(out))


def api_server_protected(addresses: Iterable[IPAddress]) -> tuple[Protected, ...]:
    return tuple(Protected.address(a, f"the API server address {a}") for a in addresses)


class ProtectedIndex:
    """Answers "what protected thing does this prefix cover?" in O(log n) for addresses.

    Addresses (one per peer endpoint: thousands) sit in sorted lists per IP version;
    networks (a node has a handful) are scanned.
    """

    def __init__(self, protected: Iterable[Protected]) -> None:
        # `what` breaks ties: two things at one address are named the same way every time.
        items = sorted(
            set(protected),
            key=lambda p: (
                p.network.version,
                int(p.network.network_address),
                p.network.prefixlen,
                p.what,
            ),
        )
        self._keys: dict[int, list[int]] = {4: [], 6: []}
        self._hosts: dict[int, list[Protected]] = {4: [], 6: []}
        self._nets: list[Protected] = []
        self._exact: dict[IPNetwork, Protected] = {}
        for p in items:
            if p.exact:
                self._exact.setdefault(p.network, p)
            elif p.is_address:
                self._keys[p.network.version].append(int(p.network.network_address))
                self._hosts[p.network.version].append(p)
            else:
                self._nets.append(p)

    def covered(self, net: IPNetwork) -> Protected | None:
        """What `net` would capture, the most telling first: a whole protected network,
        else the first protected address inside it, else a network it lies in."""
        whole = [p for p in self._nets if covers(net, p.network)]
        if whole:
            return whole[0]
        if net in self._exact:
            return self._exact[net]
        keys = self._keys[net.version]
        i = bisect.bisect_left(keys, int(net.network_address))
        if i < len(keys) and keys[i] <= span(net)[1]:
            return self._hosts[net.version][i]
        return next((p for p in self._nets if overlap(p.network, net)), None)


def describe(net: IPNetwork, protected: Protected) -> str:
    """ "allowed-ips 10.0.0.0/8 covers the API server address 10.0.0.1"."""
    if protected.exact:
        return f"allowed-ips {net} is {protected.what}"
    verb = "covers" if covers(net, protected.network) else "overlaps"
    return f"allowed-ips {net} {verb} {protected.what}"


def outside_pool(nets: Sequence[IPNetwork], pool: Sequence[IPNetwork]) -> IPNetwork | None:
    """The first prefix that lies in no network of `pool` (--peer-cidrs), else None."""
    for net in nets:
        if not any(covers(p, net) for p in pool):
            return net
    return None

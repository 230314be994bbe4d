"""An ordinary node's routes to the overlay: prefixes via the hub's InternalIP, or why not.

An ordinary cluster node (neither hub nor peer) has no WireGuard interface: it reaches a
spoke's node IP (its WireGuard address) because a route sends the overlay to the hub,
which forwards into the tunnel. The decision is a pure function of the announced hub,
this node's connected networks (what is on its link) and its settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from wgkube.domain.annotations import HubRecord
from wgkube.domain.net import IPAddress, IPNetwork, normalize_networks


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """`ip route add NETWORK via GATEWAY proto 87`: the kind of route a router owns."""

    network: IPNetwork
    gateway: IPAddress

    def __str__(self) -> str:
        return f"{self.network} via {self.gateway}"


@dataclass(frozen=True, slots=True)
class RouterDesired:
    """`routes` None: leave the routes as they are (nothing trustworthy to apply); the
    reason says why, and the router reports itself not ready."""

    routes: frozenset[GatewayRoute] | None
    hub: str | None = None
    gateway: IPAddress | None = None
    skipped: tuple[tuple[IPNetwork, str], ...] = ()
    """Prefixes not routed and why (they would capture this node's own link)."""
    problem: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ready(self) -> bool:
        return self.routes is not None and self.problem is None


CLOUD_HINT = (
    "route the overlay in the network's route table instead (next hop: the hub's VM, "
    "with IP forwarding enabled on its NIC / source-destination check off)"
)


def on_link(gateway: IPAddress, connected: Iterable[IPNetwork]) -> IPNetwork | None:
    """The connected network that holds `gateway` (most specific), or None."""
    holders = [net for net in connected if net.version == gateway.version and gateway in net]
    return max(holders, key=lambda n: n.prefixlen, default=None)


def router_routes(
    hub: HubRecord | None,
    *,
    node_name: str,
    connected: Iterable[IPNetwork],
    prefixes: tuple[IPNetwork, ...] | None = None,
) -> RouterDesired:
    """The routes this node should own.

    - No hub yet, or the hub announces no InternalIP: leave routes as they are.
    - This node is the hub: no routes (the hub has wg0 and a route per spoke).
    - The hub's InternalIP is not on a connected network: the kernel would refuse a route
      via it (a gateway must be on-link); leave routes as they are and say so.
    - Otherwise `prefixes` (the router's setting), else the hub's `router_prefixes`, else
      its allowed-ips, each via the InternalIP; a prefix that overlaps a connected network
      (the hub may advertise the cluster's own node network to spokes) or is of the other
      address family is skipped with a reason: routing it would capture this node's link.
    """
    connected = tuple(connected)
    if hub is None:
        return RouterDesired(routes=None, problem="no hub is announced yet")
    if hub.node == node_name:
        return RouterDesired(routes=frozenset(), hub=hub.node, notes=("this node is the hub",))
    gateway = hub.internal_ip
    if gateway is None:
        return RouterDesired(
            routes=None,
            hub=hub.node,
            problem=f"hub {hub.node} announces no internalIP (a hub older than the router?)",
        )
    if on_link(gateway, connected) is None:
        return RouterDesired(
            routes=None,
            hub=hub.node,
            gateway=gateway,
            problem=(
                f"hub {hub.node}'s InternalIP {gateway} is not on this node's link (no "
                f"connected route covers it), so no route can go via it: {CLOUD_HINT}"
            ),
        )
    wanted = prefixes if prefixes else hub.router_prefixes
    if wanted is None:
        wanted = hub.allowed_ips
    routes: set[GatewayRoute] = set()
    skipped: list[tuple[IPNetwork, str]] = []
    for net in normalize_networks(wanted):
        if net.version != gateway.version:
            skipped.append((net, f"IPv{net.version}, and the gateway {gateway} is not"))
            continue
        clash = next((c for c in connected if c.version == net.version and c.overlaps(net)), None)
        if clash is not None:
            skipped.append((net, f"overlaps this node's connected network {clash}"))
            continue
        routes.add(GatewayRoute(net, gateway))
    return RouterDesired(
        routes=frozenset(routes), hub=hub.node, gateway=gateway, skipped=tuple(skipped)
    )

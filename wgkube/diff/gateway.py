"""The router's gateway routes as read back vs as desired -> the fewest route operations.

A prefix whose gateway changed (the hub's InternalIP moved) is replaced in place, one
operation, never removed and added: traffic keeps flowing through the change.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgkube.desired.router import GatewayRoute
from wgkube.domain.net import IPAddress, IPNetwork


@dataclass(frozen=True, slots=True)
class AddGatewayRoute:
    route: GatewayRoute

    def __str__(self) -> str:
        return f"+ route {self.route}"


@dataclass(frozen=True, slots=True)
class ChangeGateway:
    """Our route to `network` now goes via `new` instead of `old` (NLM_F_REPLACE on a
    route we own)."""

    network: IPNetwork
    old: IPAddress
    new: IPAddress

    def __str__(self) -> str:
        return f"~ route {self.network} via {self.old} -> via {self.new}"


@dataclass(frozen=True, slots=True)
class RemoveGatewayRoute:
    route: GatewayRoute

    def __str__(self) -> str:
        return f"- route {self.route}"


GatewayOperation = AddGatewayRoute | ChangeGateway | RemoveGatewayRoute


def plan_gateway_routes(
    desired: frozenset[GatewayRoute] | None, observed: frozenset[GatewayRoute]
) -> tuple[GatewayOperation, ...]:
    """Adds and in-place changes first (sorted), removals last; `desired` None: nothing.

    Several observed routes of ours to one prefix (made by hand with proto 87, or by an
    older run) keep the one that matches, else one is changed and the rest removed.
    """
    if desired is None:
        return ()
    want = {route.network: route.gateway for route in desired}
    have: dict[IPNetwork, list[IPAddress]] = {}
    for route in sorted(observed, key=lambda r: (_key(r.network), str(r.gateway))):
        have.setdefault(route.network, []).append(route.gateway)
    ops: list[GatewayOperation] = []
    removals: list[GatewayOperation] = []
    for network in sorted(set(want) | set(have), key=_key):
        gateways = have.get(network, [])
        gateway = want.get(network)
        if gateway is None:
            removals += [RemoveGatewayRoute(GatewayRoute(network, gw)) for gw in gateways]
        elif not gateways:
            ops.append(AddGatewayRoute(GatewayRoute(network, gateway)))
        elif gateway in gateways:
            removals += [
                RemoveGatewayRoute(GatewayRoute(network, gw)) for gw in gateways if gw != gateway
            ]
        else:
            ops.append(ChangeGateway(network, gateways[0], gateway))
            removals += [RemoveGatewayRoute(GatewayRoute(network, gw)) for gw in gateways[1:]]
    return (*ops, *removals)


def _key(network: IPNetwork) -> tuple[int, int, int]:
    # IPv4 and IPv6 networks do not compare with each other.
    return (network.version, int(network.network_address), network.prefixlen)

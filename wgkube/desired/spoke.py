"""The spoke's desired state: its device and one peer, the hub."""

from __future__ import annotations

from collections.abc import Iterable

from wgkube.desired.hub import is_default_route
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.desired.protected import Protected, ProtectedIndex, api_server_protected
from wgkube.domain.annotations import HubRecord
from wgkube.domain.net import IPAddress, IPNetwork, normalize_networks


def hub_allowed(
    hub: HubRecord, hub_allowed_ips: tuple[IPNetwork, ...] | None
) -> tuple[IPNetwork, ...]:
    """`hub_allowed_ips` (HUB_ALLOWED_IPS) overrides the hub's allowed-ips annotation."""
    return normalize_networks(hub_allowed_ips if hub_allowed_ips else hub.allowed_ips)


def unsafe_routes(
    hub: HubRecord | None,
    *,
    hub_allowed_ips: tuple[IPNetwork, ...] | None = None,
    api_server: Iterable[IPAddress] = (),
) -> dict[IPNetwork, str]:
    """Prefixes of the hub's allowed-ips that get no route, and why.

    A route into the tunnel for a prefix that holds the hub's endpoint would send the
    tunnel's own packets into the tunnel; one that holds the API server would cut the
    agent off from what tells it where the hub is. A hub advertising 0.0.0.0/0 (or its
    two halves) must not be able to do either. The peer keeps the prefix in its
    allowed-ips: only the route, which is what steers this node's traffic, is left out.
    """
    if hub is None:
        return {}
    guarded: list[Protected] = list(api_server_protected(api_server))
    if hub.endpoint is not None:
        guarded.append(
            Protected.address(hub.endpoint.host, f"the hub's endpoint {hub.endpoint.host}")
        )
    index = ProtectedIndex(guarded)
    out: dict[IPNetwork, str] = {}
    for net in hub_allowed(hub, hub_allowed_ips):
        if not is_default_route(net) and (p := index.covered(net)) is not None:
            out[net] = (
                f"hub {hub.node}: no route for {net}: it covers {p.what}, "
                "which must stay reachable outside the tunnel"
            )
    return out


def spoke_state(
    device: DeviceSpec,
    hub: HubRecord | None,
    *,
    hub_allowed_ips: tuple[IPNetwork, ...] | None = None,
    persistent_keepalive: int = 25,
    api_server: Iterable[IPAddress] = (),
) -> DesiredState:
    """With no hub known yet, only the device is managed: an existing peer is left alone.

    Every prefix of the hub's allowed-ips gets a route, except a default route and the
    prefixes `unsafe_routes` names (the hub's endpoint, `api_server`) and the networks of
    the device's own addresses.
    """
    if hub is None:
        return DesiredState(device=device, peers=None)
    allowed = hub_allowed(hub, hub_allowed_ips)
    peer = PeerSpec(
        public_key=hub.public_key,
        endpoint=hub.endpoint,
        allowed_ips=allowed,
        persistent_keepalive=persistent_keepalive,
    )
    unsafe = unsafe_routes(hub, hub_allowed_ips=hub_allowed_ips, api_server=api_server)
    # The kernel's connected route of the device's own address (100.96.0.2/24 gives
    # `100.96.0.0/24 dev wg0 proto kernel`) already carries that prefix into the tunnel;
    # it is the kernel's, and a route of ours with the same key would collide with it.
    connected = {a.network for a in device.addresses}
    routes = frozenset(
        net
        for net in allowed
        if not is_default_route(net) and net not in unsafe and net not in connected
    )
    return DesiredState(device=device, peers={hub.public_key: peer}, routes=routes)

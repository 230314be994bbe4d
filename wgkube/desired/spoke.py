"""The spoke's desired state: its device and one peer, the hub; with several hubs, one
device per hub, each holding that hub as its one peer, and the routes on the active one."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from wgkube.desired.hub import is_default_route
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.desired.protected import Protected, ProtectedIndex, api_server_protected
from wgkube.domain.annotations import HubRecord
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import IPAddress, IPInterface, IPNetwork, normalize_networks

MAX_HUBS = 8
"""Hubs a spoke keeps a device for: the interface names end in one digit."""


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
    other_hubs: Iterable[HubRecord] = (),
) -> dict[IPNetwork, str]:
    """Prefixes of the hub's allowed-ips that get no route, and why.

    A route into the tunnel for a prefix that holds the hub's endpoint would send the
    tunnel's own packets into the tunnel (so do `other_hubs`' endpoints: a route through
    one hub must not carry the tunnels to the others); one that holds the API server
    would cut the agent off from what tells it where the hub is. A hub advertising 0.0.0.0/0 (or its
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
    for other in other_hubs:
        if other.endpoint is not None and other.node != hub.node:
            where = other.endpoint.host
            guarded.append(Protected.address(where, f"hub {other.node}'s endpoint {where}"))
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
    other_hubs: Iterable[HubRecord] = (),
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
    unsafe = unsafe_routes(
        hub, hub_allowed_ips=hub_allowed_ips, api_server=api_server, other_hubs=other_hubs
    )
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


def hub_interface_name(base: str, slot: int) -> str:
    """Slot 0 is the configured interface itself (one hub: exactly today's device)."""
    return base if slot == 0 else f"{base[:13]}-{slot}"


def hub_slots(
    base: str, hubs: Sequence[HubRecord], holding: Mapping[str, PublicKey]
) -> dict[str, int]:
    """Hub Node name -> the slot of the spoke's interface for it (`hub_interface_name`).

    `holding` is what the kernel has: interface -> the public key of its one peer. A hub
    keeps the interface that already holds its key, so a hub joining or leaving moves no
    other hub's tunnel; a new hub takes the lowest free slot. Beyond MAX_HUBS hubs, the
    rest get none (the preferred come first in `hubs`).
    """
    out: dict[str, int] = {}
    taken: set[int] = set()
    for hub in hubs:
        for slot in range(MAX_HUBS):
            if holding.get(hub_interface_name(base, slot)) == hub.public_key and slot not in taken:
                out[hub.node] = slot
                taken.add(slot)
                break
    for hub in hubs:
        if hub.node in out:
            continue
        free = [slot for slot in range(MAX_HUBS) if slot not in taken]
        if not free:
            break
        out[hub.node] = free[0]
        taken.add(free[0])
    return out


def host_addresses(addresses: Iterable[IPInterface]) -> tuple[IPInterface, ...]:
    """Each address as a /32 or /128: on every hub's device, so the kernel picks the
    overlay address as source whichever device the route points at, and no device gets a
    connected route that would hold the hubs' range in place of the movable one."""
    return tuple(ipaddress.ip_interface(a.ip) for a in addresses)


def spoke_ha_states(
    device: DeviceSpec,
    hubs: Sequence[HubRecord],
    slots: Mapping[str, int],
    active: str | None,
    *,
    hub_allowed_ips: tuple[IPNetwork, ...] | None = None,
    persistent_keepalive: int = 25,
    api_server: Iterable[IPAddress] = (),
) -> dict[str, DesiredState]:
    """One desired state per hub's interface, by name (slots from `hub_slots`): the device
    with the spoke's key and host addresses, listening on its port plus the slot (one UDP
    socket each), the hub as its one peer holding the whole range the hub advertises (so
    every hub can deliver to this spoke), and the routes only on the interface of the
    `active` hub. Failover moves those routes, nothing else."""
    out: dict[str, DesiredState] = {}
    addresses = host_addresses(device.addresses)
    for hub in hubs:
        slot = slots.get(hub.node)
        if slot is None:
            continue
        ifname = hub_interface_name(device.name, slot)
        port = None if device.listen_port is None else device.listen_port + slot
        state = spoke_state(
            replace(device, name=ifname, addresses=addresses, listen_port=port),
            hub,
            hub_allowed_ips=hub_allowed_ips,
            persistent_keepalive=persistent_keepalive,
            api_server=api_server,
            other_hubs=hubs,
        )
        out[ifname] = state if hub.node == active else replace(state, routes=frozenset())
    return out

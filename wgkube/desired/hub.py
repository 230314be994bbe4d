"""The hub's desired state from its peer registry, with the conflict rule."""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from wgkube.desired.model import CONFLICT, DesiredState, DeviceSpec, PeerSpec, Rejection
from wgkube.desired.protected import Protected, ProtectedIndex, describe, outside_pool
from wgkube.domain.annotations import HubRecord, PeerRecord
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint, IPNetwork, format_networks, normalize_networks

_EPOCH = datetime.min.replace(tzinfo=UTC)


def seniority(record: PeerRecord) -> tuple[datetime, str]:
    """The conflict rule's order: the older Node wins, then the name sorts first."""
    created = record.created or _EPOCH
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created, record.node


class _Claims:
    """Disjoint address ranges already granted, one sorted list per IP version.

    CIDR blocks either nest or do not meet, so the granted set stays disjoint and
    one bisect finds any overlap: O(log n) per query instead of comparing all pairs.
    """

    def __init__(self) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        self._owners: dict[int, list[str]] = {4: [], 6: []}

    def owners_of(self, net: IPNetwork) -> list[str]:
        """Who holds anything inside or around `net`: a contiguous run ending at one bisect."""
        start, end = int(net.network_address), int(net.broadcast_address)
        starts, ends = self._starts[net.version], self._ends[net.version]
        owners: list[str] = []
        i = bisect.bisect_right(starts, end) - 1
        while i >= 0 and ends[i] >= start:
            owners.append(self._owners[net.version][i])
            i -= 1
        return owners

    def grant(self, net: IPNetwork, owner: str) -> None:
        start, end = int(net.network_address), int(net.broadcast_address)
        i = bisect.bisect_left(self._starts[net.version], start)
        self._starts[net.version].insert(i, start)
        self._ends[net.version].insert(i, end)
        self._owners[net.version].insert(i, owner)


def _collapsed(nets: Iterable[IPNetwork]) -> list[IPNetwork]:
    out: list[IPNetwork] = []
    for version in (4, 6):
        same = [n for n in nets if n.version == version]
        out.extend(ipaddress.collapse_addresses(same))  # type: ignore[type-var]
    return out


HUB_OWNER = "the hub's own address"


def _describe_owners(owners: list[str]) -> str:
    """The hub first, then nodes by name; at most three named."""
    unique = sorted(set(owners), key=lambda o: (o != HUB_OWNER, o))
    named = [o if o == HUB_OWNER else f"node {o!r}" for o in unique[:3]]
    more = f" and {len(unique) - 3} more" if len(unique) > 3 else ""
    return ", ".join(named) + more


def is_default_route(net: IPNetwork) -> bool:
    return net.prefixlen == 0


def hub_state(
    device: DeviceSpec,
    records: Iterable[PeerRecord],
    *,
    persistent_keepalive: int = 0,
    protected: Iterable[Protected] = (),
    learned_endpoints: Mapping[PublicKey, Endpoint] | None = None,
    peer_cidrs: tuple[IPNetwork, ...] | None = None,
    hubs: Iterable[HubRecord] = (),
) -> tuple[DesiredState, list[Rejection]]:
    """Accept peers oldest first; a peer that conflicts with an accepted one is rejected whole.

    Conflicts: the hub's own public key, a public key already taken, or allowed-ips that
    overlap the hub's own addresses or an accepted peer's allowed-ips. A default route
    (0.0.0.0/0, ::/0) never reaches here: the codec refuses it on any peer whatever the
    hub's addresses (decode_peer); were one given, it would still get no kernel route.

    Route safety, whatever the peer's age: allowed-ips must lie inside `peer_cidrs`
    (--peer-cidrs) when it is given, and must not cover anything `protected` (the API
    server, the host's addresses, gateways and connected networks) nor any peer's
    endpoint, published or `learned_endpoints` (what WireGuard learned): a route into the
    tunnel for it would carry the hub's own underlay traffic into the tunnel.

    `hubs` (the announcement; this hub's own entry is skipped) become peers first, on
    their own addresses only, so that traffic can cross between hubs; a spoke claiming a
    hub's address then conflicts with it. A hub entry without addresses, or whose
    addresses overlap this hub's or an earlier hub's, is left out.
    """
    own_key = device.private_key.public_key()
    records = list(records)
    names = {r.public_key: r.node for r in records}
    endpoints = [
        Protected.address(r.endpoint.host, f"the endpoint {r.endpoint.host} of node {r.node!r}")
        for r in records
        if r.endpoint is not None
    ]
    published = {p.network for p in endpoints}
    for key, endpoint in (learned_endpoints or {}).items():
        if ipaddress.ip_network(endpoint.host) in published:
            continue  # what the hub itself set from the annotation: named as published
        who = f"node {names[key]!r}" if key in names else f"peer {key.short()}"
        endpoints.append(
            Protected.address(endpoint.host, f"the endpoint {endpoint.host} learned from {who}")
        )
    guarded = ProtectedIndex([*protected, *endpoints])
    claims = _Claims()
    for address in device.addresses:
        claims.grant(ipaddress.ip_network(address.ip), HUB_OWNER)

    peers: dict[PublicKey, PeerSpec] = {}
    key_owner: dict[PublicKey, str] = {}
    rejections: list[Rejection] = []
    for other in sorted(hubs, key=lambda h: h.node):
        mine = _collapsed(other.addresses)
        if other.public_key == own_key or other.public_key in key_owner or not mine:
            continue
        if any(claims.owners_of(n) for n in mine):
            continue
        for net in mine:
            claims.grant(net, other.node)
        key_owner[other.public_key] = other.node
        peers[other.public_key] = PeerSpec(
            public_key=other.public_key,
            endpoint=other.endpoint,
            allowed_ips=normalize_networks(other.addresses),
            persistent_keepalive=persistent_keepalive,
        )
    for record in sorted(records, key=seniority):
        if record.public_key == own_key:
            rejections.append(
                Rejection(record.node, CONFLICT, "public-key is the hub's own public key")
            )
            continue
        if record.public_key in key_owner:
            rejections.append(
                Rejection(
                    record.node,
                    CONFLICT,
                    f"public-key {record.public_key.short()} is already used by node "
                    f"{key_owner[record.public_key]!r} (the older Node keeps it)",
                )
            )
            continue
        mine = _collapsed(record.allowed_ips)
        if peer_cidrs is not None and (stray := outside_pool(mine, peer_cidrs)) is not None:
            rejections.append(
                Rejection(
                    record.node,
                    CONFLICT,
                    f"allowed-ips {stray} is outside --peer-cidrs {format_networks(peer_cidrs)}",
                )
            )
            continue
        hazard = next(((n, p) for n in mine if (p := guarded.covered(n)) is not None), None)
        if hazard is not None:
            rejections.append(Rejection(record.node, CONFLICT, describe(*hazard)))
            continue
        clash = next(((n, o) for n in mine if (o := claims.owners_of(n))), None)
        if clash is not None:
            net, owners = clash
            rejections.append(
                Rejection(
                    record.node,
                    CONFLICT,
                    f"allowed-ips {net} overlaps {_describe_owners(owners)} "
                    "(the older Node keeps the prefix)",
                )
            )
            continue
        for net in mine:
            claims.grant(net, record.node)
        key_owner[record.public_key] = record.node
        peers[record.public_key] = PeerSpec(
            public_key=record.public_key,
            endpoint=record.endpoint,
            allowed_ips=normalize_networks(record.allowed_ips),
            persistent_keepalive=persistent_keepalive,
        )
    routes = frozenset(
        net for spec in peers.values() for net in spec.allowed_ips if not is_default_route(net)
    )
    return DesiredState(device=device, peers=peers, routes=routes), rejections

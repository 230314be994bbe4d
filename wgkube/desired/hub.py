"""The hub's desired state from its peer registry, with the conflict rule."""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Generic, TypeVar

from wgkube.desired.model import CONFLICT, DesiredState, DeviceSpec, PeerSpec, Rejection
from wgkube.desired.protected import Protected, ProtectedIndex, describe, outside_pool
from wgkube.domain.annotations import HubRecord, PeerRecord
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint, IPNetwork, format_networks, normalize_networks, span

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
        start, end = span(net)
        starts, ends = self._starts[net.version], self._ends[net.version]
        owners: list[str] = []
        i = bisect.bisect_right(starts, end) - 1
        while i >= 0 and ends[i] >= start:
            owners.append(self._owners[net.version][i])
            i -= 1
        return owners

    def grant(self, net: IPNetwork, owner: str) -> None:
        start, end = span(net)
        i = bisect.bisect_left(self._starts[net.version], start)
        self._starts[net.version].insert(i, start)
        self._ends[net.version].insert(i, end)
        self._owners[net.version].insert(i, owner)


def _collapsed(nets: Collection[IPNetwork]) -> list[IPNetwork]:
    if len(nets) == 1:  # most peers: one prefix, which collapses to itself
        return list(nets)
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
    records = sorted(records, key=seniority)
    names: dict[PublicKey, str] = {}
    for r in records:
        names.setdefault(r.public_key, r.node)  # the Node that holds the key (the oldest)
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
    for record in records:
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


K = TypeVar("K")
V = TypeVar("V")


class _Holders(Generic[K, V]):
    """Each key's holders. Nearly every key has one, kept as the bare value; a set is
    made at the second (a set per key is ~200 B: 2 MB per index at 10,000 peers, and a
    resync builds a second state beside the current one). V is never a set itself."""

    __slots__ = ("_by",)

    def __init__(self) -> None:
        self._by: dict[K, V | set[V]] = {}

    def add(self, key: K, value: V) -> bool:
        """True when `key` had no holder before."""
        held = self._by.get(key)
        if held is None:
            self._by[key] = value
            return True
        if isinstance(held, set):
            held.add(value)
        elif held != value:
            self._by[key] = {held, value}
        return False

    def discard(self, key: K, value: V) -> bool:
        """True when `key` has no holder left (and had one)."""
        held = self._by.get(key)
        if held is None:
            return False
        if isinstance(held, set):
            held.discard(value)
            if len(held) == 1:
                self._by[key] = next(iter(held))
            return False
        if held != value:
            return False
        del self._by[key]
        return True

    def of(self, key: K) -> Iterable[V]:
        held = self._by.get(key)
        if held is None:
            return ()
        return held if isinstance(held, set) else (held,)


class _NetIndex:
    """Which names claim a prefix that overlaps a given one, without scanning them all.

    CIDR blocks nest or do not meet: a block overlapping `q` either starts inside `q`
    (one bisect over the sorted starts) or contains it (one lookup per shorter length).
    """

    def __init__(self) -> None:
        self._exact: _Holders[IPNetwork, str] = _Holders()
        self._sorted: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        self._at: dict[tuple[int, int, int], IPNetwork] = {}

    def add(self, net: IPNetwork, name: str) -> None:
        if self._exact.add(net, name):
            spot = (int(net.network_address), net.prefixlen)
            bisect.insort(self._sorted[net.version], spot)
            self._at[(net.version, *spot)] = net

    def discard(self, net: IPNetwork, name: str) -> None:
        if self._exact.discard(net, name):
            spot = (int(net.network_address), net.prefixlen)
            items = self._sorted[net.version]
            del items[bisect.bisect_left(items, spot)]
            del self._at[(net.version, *spot)]

    def overlapping(self, net: IPNetwork) -> set[str]:
        out: set[str] = set()
        start, end = span(net)
        items = self._sorted[net.version]
        i = bisect.bisect_left(items, (start, -1))
        while i < len(items) and items[i][0] <= end:
            out.update(self._exact.of(self._at[(net.version, *items[i])]))
            i += 1
        bits = net.max_prefixlen
        for length in range(net.prefixlen):  # the blocks around it, by their first address
            shift = bits - length
            around = self._at.get((net.version, start >> shift << shift, length))
            if around is not None:
                out.update(self._exact.of(around))
        return out


class _HostIndex:
    """Addresses (endpoints) by owner, answering "which lie inside this prefix"."""

    def __init__(self) -> None:
        self._owners: _Holders[tuple[int, int], object] = _Holders()
        self._sorted: dict[int, list[int]] = {4: [], 6: []}

    def add(self, host: IPNetwork, owner: object) -> None:
        spot = (host.version, int(host.network_address))
        if self._owners.add(spot, owner):
            bisect.insort(self._sorted[host.version], spot[1])

    def discard(self, host: IPNetwork, owner: object) -> None:
        spot = (host.version, int(host.network_address))
        if self._owners.discard(spot, owner):
            items = self._sorted[host.version]
            del items[bisect.bisect_left(items, spot[1])]

    def inside(self, net: IPNetwork) -> set[object]:
        out: set[object] = set()
        items = self._sorted[net.version]
        start, end = span(net)
        i = bisect.bisect_left(items, start)
        while i < len(items) and items[i] <= end:
            out.update(self._owners.of((net.version, items[i])))
            i += 1
        return out


def _host(endpoint: Endpoint) -> IPNetwork:
    return ipaddress.ip_network(endpoint.host)


class HubDesired:
    """`hub_state` kept up to date Node by Node: a change costs the Nodes it can affect.

    A Node's acceptance depends only on the Nodes it conflicts with: those sharing its
    public key, claiming an overlapping prefix, or whose prefixes cover its endpoint (or
    the reverse). The Nodes connected to a change through that relation (transitively: a
    Node let in can shut out a younger one, which lets in a third) are recomputed with
    `hub_state` itself; no other Node's outcome can differ, so the result equals a full
    recomputation (the property test in tests/unit/test_desired_incremental.py).

    The protected set and the learned endpoints are given to `reset` (at every resync,
    where the whole state is recomputed anyway).
    """

    def __init__(
        self,
        device: DeviceSpec,
        *,
        persistent_keepalive: int = 0,
        peer_cidrs: tuple[IPNetwork, ...] | None = None,
    ) -> None:
        self.device = device
        self._keepalive = persistent_keepalive
        self._peer_cidrs = peer_cidrs
        self._clear()

    def _clear(self) -> None:
        self._hubs: tuple[HubRecord, ...] = ()
        self._protected: tuple[Protected, ...] = ()
        self._learned: dict[PublicKey, Endpoint] = {}
        self._learned_hosts = _HostIndex()
        self._records: dict[str, PeerRecord] = {}
        self._by_key: _Holders[PublicKey, str] = _Holders()
        self._nets = _NetIndex()
        self._endpoints = _HostIndex()
        self._peers: dict[PublicKey, PeerSpec] = {}
        self._holder: dict[str, PublicKey] = {}
        """Accepted Node -> the key whose peer it gives."""
        self._rejections: dict[str, Rejection] = {}
        self._routes: set[IPNetwork] = set()

    # -- the result --------------------------------------------------------------------
    def state(self) -> DesiredState:
        return DesiredState(
            device=self.device, peers=dict(self._peers), routes=frozenset(self._routes)
        )

    def rejections(self) -> list[Rejection]:
        return list(self._rejections.values())

    # -- changes -----------------------------------------------------------------------
    def reset(
        self,
        records: Iterable[PeerRecord],
        *,
        protected: Iterable[Protected] = (),
        learned_endpoints: Mapping[PublicKey, Endpoint] | None = None,
        hubs: Iterable[HubRecord] = (),
    ) -> None:
        """Everything from scratch (start-up, every resync, a change of the other hubs)."""
        self._clear()
        self._hubs = tuple(hubs)
        self._protected = tuple(protected)
        self._learned = dict(learned_endpoints or {})
        for key, endpoint in self._learned.items():
            self._learned_hosts.add(_host(endpoint), key)
        for record in records:
            self._index(record)
        self._recompute(set(self._records))
        # The other hubs' peers depend on no Node (they are granted first): set once here.
        hub_peers = hub_state(
            self.device, (), hubs=self._hubs, persistent_keepalive=self._keepalive
        )
        for key, spec in (hub_peers[0].peers or {}).items():
            self._peers[key] = spec
            self._routes.update(n for n in spec.allowed_ips if not is_default_route(n))

    @property
    def hubs(self) -> tuple[HubRecord, ...]:
        """The other hubs this state was computed with (a change needs a `reset`)."""
        return self._hubs

    def update(self, changes: Mapping[str, PeerRecord | None]) -> set[PublicKey]:
        """Take the Nodes' new records (None: no longer a usable peer); returns the
        public keys whose desired peer was added, changed or removed."""
        before: list[PeerRecord] = []
        for name, record in changes.items():
            old = self._records.get(name)
            if old == record:
                continue
            if old is not None:
                self._unindex(old)
                before.append(old)
            if record is not None:
                self._index(record)
        seeds = [self._records[n] for n in changes if n in self._records] + before
        if not seeds:
            return set()
        return self._recompute(self._component(seeds))

    # -- internals ---------------------------------------------------------------------
    def _index(self, record: PeerRecord) -> None:
        self._records[record.node] = record
        self._by_key.add(record.public_key, record.node)
        for net in record.allowed_ips:
            self._nets.add(net, record.node)
        if record.endpoint is not None:
            self._endpoints.add(_host(record.endpoint), record.node)

    def _unindex(self, record: PeerRecord) -> None:
        del self._records[record.node]
        self._by_key.discard(record.public_key, record.node)
        for net in record.allowed_ips:
            self._nets.discard(net, record.node)
        if record.endpoint is not None:
            self._endpoints.discard(_host(record.endpoint), record.node)

    def _related(self, record: PeerRecord) -> set[str]:
        """The Nodes whose outcome can depend on `record`'s, or it on theirs."""
        out = set(self._by_key.of(record.public_key))
        for net in record.allowed_ips:
            out |= self._nets.overlapping(net)
            out |= {str(n) for n in self._endpoints.inside(net)}
            for key in self._learned_hosts.inside(net):
                if isinstance(key, PublicKey):
                    out.update(self._by_key.of(key))
        hosts = [record.endpoint] if record.endpoint is not None else []
        if (learned := self._learned.get(record.public_key)) is not None:
            hosts.append(learned)
        for endpoint in hosts:
            out |= self._nets.overlapping(_host(endpoint))
        return out

    def _component(self, seeds: list[PeerRecord]) -> set[str]:
        seen: set[str] = {r.node for r in seeds}
        frontier = list(seeds)
        while frontier:
            record = frontier.pop()
            for name in self._related(record) - seen:
                seen.add(name)
                frontier.append(self._records[name])
        return seen

    def _recompute(self, names: set[str]) -> set[PublicKey]:
        records = [self._records[n] for n in names if n in self._records]
        covered: set[object] = set()
        for record in records:
            for net in record.allowed_ips:
                covered |= self._learned_hosts.inside(net)
        learned = {k: e for k, e in self._learned.items() if k in covered}
        state, rejections = hub_state(
            self.device,
            records,
            persistent_keepalive=self._keepalive,
            protected=self._protected,
            learned_endpoints=learned,
            peer_cidrs=self._peer_cidrs,
            hubs=self._hubs,
        )
        old: dict[PublicKey, PeerSpec] = {}
        for name in names:
            key = self._holder.pop(name, None)
            if key is not None:
                spec = self._peers.pop(key)
                old[key] = spec
                self._routes.difference_update(spec.allowed_ips)
            self._rejections.pop(name, None)
        rejected = {r.node for r in rejections}
        for rejection in rejections:
            self._rejections[rejection.node] = rejection
        assert state.peers is not None
        for record in records:
            if record.node in rejected:
                continue
            spec = state.peers[record.public_key]
            self._holder[record.node] = record.public_key
            self._peers[record.public_key] = spec
            self._routes.update(n for n in spec.allowed_ips if not is_default_route(n))
        touched = {k for k in old if self._peers.get(k) != old[k]}
        keys = {r.public_key for r in records}
        touched |= {k for k in state.peers if k not in old and k in keys}
        return touched

"""The kernel as last read plus exactly what was applied since: what the hub diffs one
change against between resyncs, instead of reading 10,000 peers and routes back."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

from wgkube.desired.model import DesiredState
from wgkube.diff.model import (
    AddRoute,
    ObservedPeer,
    ObservedState,
    Operation,
    RemovePeer,
    RemoveRoute,
    UpsertPeer,
)
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import IPNetwork


class ObservedCache:
    """Peers and routes as the kernel holds them, kept by replaying applied operations
    with the kernel's semantics (an allowed-ip moves to the peer that last took it).

    Only peer and route operations are replayed: anything else (a link, an address, the
    device's key or port) makes `replay` return False, and the caller reads the kernel
    again. Drift made by hand is not seen here: the resync reads the kernel.
    """

    def __init__(self, observed: ObservedState) -> None:
        self.device = dataclasses.replace(observed, peers={}, routes=frozenset())
        self.peers: dict[PublicKey, ObservedPeer] = dict(observed.peers)
        self.routes: set[IPNetwork] = set(observed.routes)
        self._owner: dict[IPNetwork, PublicKey] = {
            net: key for key, peer in self.peers.items() for net in peer.allowed_ips
        }

    def state(self) -> ObservedState:
        return dataclasses.replace(
            self.device, peers=dict(self.peers), routes=frozenset(self.routes)
        )

    def replay(self, ops: Iterable[Operation]) -> bool:
        """Apply what the kernel took; False when an operation is not a peer's or a route's."""
        for op in ops:
            match op:
                case UpsertPeer():
                    self._upsert(op)
                case RemovePeer(key):
                    gone = self.peers.pop(key, None)
                    for net in gone.allowed_ips if gone else ():
                        if self._owner.get(net) == key:
                            del self._owner[net]
                case AddRoute(net):
                    self.routes.add(net)
                case RemoveRoute(net):
                    self.routes.discard(net)
                case _:
                    return False
        return True

    def _upsert(self, op: UpsertPeer) -> None:
        have = self.peers.get(op.public_key) or ObservedPeer(public_key=op.public_key)
        allowed = have.allowed_ips
        if op.allowed_ips is not None:
            allowed = frozenset(op.allowed_ips)
            for net in have.allowed_ips - allowed:
                if self._owner.get(net) == op.public_key:
                    del self._owner[net]
            for net in allowed:
                other = self._owner.get(net)
                if other is not None and other != op.public_key and other in self.peers:
                    lost = self.peers[other]
                    self.peers[other] = dataclasses.replace(
                        lost, allowed_ips=lost.allowed_ips - {net}
                    )
                self._owner[net] = op.public_key
        psk = have.preshared_key
        if op.preshared_key is not None:
            psk = None if op.preshared_key.is_zero else op.preshared_key
        self.peers[op.public_key] = dataclasses.replace(
            have,
            endpoint=op.endpoint if op.endpoint is not None else have.endpoint,
            allowed_ips=allowed,
            persistent_keepalive=have.persistent_keepalive
            if op.persistent_keepalive is None
            else op.persistent_keepalive,
            preshared_key=psk,
        )

    def narrowed(
        self, desired: DesiredState, keys: Collection[PublicKey]
    ) -> tuple[DesiredState, ObservedState]:
        """`desired` and the cache cut down to the peers `keys` and the routes of their
        prefixes (as desired or as held): plan() on them costs the change, not N."""
        wanted = desired.peers or {}
        peers = {k: wanted[k] for k in keys if k in wanted}
        held = {k: self.peers[k] for k in keys if k in self.peers}
        nets: set[IPNetwork] = set()
        for spec in peers.values():
            nets.update(spec.allowed_ips)
        for peer in held.values():
            nets.update(peer.allowed_ips)
        routes = frozenset(n for n in nets if n in desired.routes)
        observed_routes = frozenset(n for n in nets if n in self.routes)
        return (
            dataclasses.replace(desired, peers=peers, routes=routes),
            dataclasses.replace(self.device, peers=held, routes=observed_routes),
        )

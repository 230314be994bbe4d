"""Observed kernel state vs desired state -> the fewest operations, in a fixed safe order.

Order: link, addresses, device, peers, routes are added; then routes, peers and
addresses are removed, in reverse. Semantics follow `wg syncconf`: peers absent from
the desired set are removed one by one (never replace-all), changed peers get
`replace_allowed_ips`, and a dropped keepalive or preshared key is explicitly zeroed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from wgkube.desired.model import DesiredState, PeerSpec
from wgkube.diff.model import (
    AddAddress,
    AddRoute,
    ConfigureDevice,
    CreateLink,
    ObservedPeer,
    ObservedState,
    Operation,
    RemoveAddress,
    RemovePeer,
    RemoveRoute,
    SetMtu,
    SetUp,
    UpsertPeer,
)
from wgkube.domain.keys import PresharedKey, PublicKey
from wgkube.domain.net import Endpoint, normalize_networks

EndpointMemory = Mapping[PublicKey, Endpoint | None]


def plan(
    desired: DesiredState,
    observed: ObservedState,
    *,
    applied_endpoints: EndpointMemory | None = None,
) -> tuple[Operation, ...]:
    """The operations that make `observed` match `desired`; empty when they already do.

    A published endpoint is written when the peer is new or when the published value
    changed since it was last applied (`applied_endpoints`, kept by the caller). A
    periodic resync therefore never overwrites an endpoint WireGuard learned from a
    roaming peer; without memory (after a restart) the kernel's value is the baseline.
    """
    device = desired.device
    ops: list[Operation] = []
    if not observed.exists:
        ops.append(CreateLink(device.name))
    if device.mtu is not None and observed.mtu != device.mtu:
        ops.append(SetMtu(device.mtu))
    for address in sorted(set(device.addresses) - observed.addresses, key=_addr_key):
        ops.append(AddAddress(address))
    if not observed.up:
        ops.append(SetUp())

    configure = ConfigureDevice(
        private_key=None
        if observed.private_key == device.private_key.clamped()
        else device.private_key,
        listen_port=None
        if device.listen_port is None or observed.listen_port == device.listen_port
        else device.listen_port,
        fwmark=None if observed.fwmark == device.fwmark else device.fwmark,
    )
    if configure != ConfigureDevice():
        ops.append(configure)

    removals: list[Operation] = []
    if desired.peers is not None:
        for key in sorted(desired.peers):
            upsert = _peer_ops(desired.peers[key], observed.peers.get(key), applied_endpoints)
            if upsert is not None:
                ops.append(upsert)
        for net in sorted(desired.routes - observed.routes, key=_net_key):
            ops.append(AddRoute(net))
        for net in sorted(observed.routes - desired.routes, key=_net_key):
            removals.append(RemoveRoute(net))
        for key in sorted(set(observed.peers) - set(desired.peers)):
            removals.append(RemovePeer(key))
    for address in sorted(observed.addresses - set(device.addresses), key=_addr_key):
        removals.append(RemoveAddress(address))
    return (*ops, *removals)


def _peer_ops(
    want: PeerSpec, have: ObservedPeer | None, applied: EndpointMemory | None
) -> UpsertPeer | None:
    allowed = normalize_networks(want.allowed_ips)
    if have is None:
        return UpsertPeer(
            public_key=want.public_key,
            endpoint=want.endpoint,
            allowed_ips=allowed,
            persistent_keepalive=want.persistent_keepalive or None,
            preshared_key=want.preshared_key,
            new=True,
        )
    endpoint: Endpoint | None = None
    if want.endpoint is not None:
        baseline = have.endpoint
        if applied is not None and want.public_key in applied:
            baseline = applied[want.public_key]
        # Also skip it when the kernel already holds it (the peer roamed to the newly
        # published address before we saw the annotation): rewriting it is a wasted write.
        if want.endpoint != baseline and want.endpoint != have.endpoint:
            endpoint = want.endpoint
    want_psk = want.preshared_key if want.preshared_key and not want.preshared_key.is_zero else None
    psk: PresharedKey | None = None
    if want_psk != have.preshared_key:
        psk = want_psk or PresharedKey.zero()
    update = UpsertPeer(
        public_key=want.public_key,
        endpoint=endpoint,
        allowed_ips=None if frozenset(allowed) == have.allowed_ips else allowed,
        persistent_keepalive=None
        if want.persistent_keepalive == have.persistent_keepalive
        else want.persistent_keepalive,
        preshared_key=psk,
    )
    return None if update == UpsertPeer(public_key=want.public_key) else update


def _addr_key(a: object) -> tuple[int, str]:
    return (getattr(a, "version", 0), str(a))


def _net_key(n: object) -> tuple[int, int, int]:
    return (
        getattr(n, "version", 0),
        int(getattr(n, "network_address", 0)),
        int(getattr(n, "prefixlen", 0)),
    )


def describe(ops: Sequence[Operation]) -> list[str]:
    """One readable line per operation, for the log before every write. No secrets."""
    lines: list[str] = []
    for op in ops:
        match op:
            case CreateLink(name):
                lines.append(f"create link {name}")
            case SetMtu(mtu):
                lines.append(f"set mtu {mtu}")
            case SetUp():
                lines.append("set link up")
            case AddAddress(address):
                lines.append(f"add address {address}")
            case RemoveAddress(address):
                lines.append(f"remove address {address}")
            case ConfigureDevice(private_key, listen_port, fwmark):
                parts = []
                if private_key is not None:
                    parts.append(f"private-key (public {private_key.public_key().short()})")
                if listen_port is not None:
                    parts.append(f"listen-port {listen_port}")
                if fwmark is not None:
                    parts.append(f"fwmark {fwmark:#x}")
                lines.append("configure device " + ", ".join(parts))
            case UpsertPeer(key, endpoint, allowed, keepalive, psk, new):
                parts = []
                if endpoint is not None:
                    parts.append(f"endpoint {endpoint}")
                if allowed is not None:
                    parts.append("allowed-ips " + (",".join(map(str, allowed)) or "(none)"))
                if keepalive is not None:
                    parts.append(f"keepalive {keepalive or 'off'}")
                if psk is not None:
                    parts.append("preshared-key " + ("cleared" if psk.is_zero else "set"))
                verb = "add" if new else "update"
                lines.append(f"{verb} peer {key.short()} " + ", ".join(parts))
            case RemovePeer(key):
                lines.append(f"remove peer {key.short()}")
            case AddRoute(net):
                lines.append(f"add route {net}")
            case RemoveRoute(net):
                lines.append(f"remove route {net}")
    return lines

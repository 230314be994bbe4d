"""What a node's WireGuard device, peers and routes should be: plain immutable values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wgkube.domain.keys import PresharedKey, PrivateKey, PublicKey
from wgkube.domain.net import Endpoint, IPInterface, IPNetwork


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """The interface itself. `None` for listen_port or mtu means "whatever it has"."""

    name: str
    private_key: PrivateKey
    listen_port: int | None = None
    fwmark: int = 0
    addresses: tuple[IPInterface, ...] = ()
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer. `endpoint=None` means "keep whatever endpoint WireGuard learned"."""

    public_key: PublicKey
    endpoint: Endpoint | None
    allowed_ips: tuple[IPNetwork, ...]
    persistent_keepalive: int = 0
    preshared_key: PresharedKey | None = None


@dataclass(frozen=True, slots=True)
class DesiredState:
    """A whole node. `peers=None` leaves peers and routes untouched (nothing known yet)."""

    device: DeviceSpec
    peers: Mapping[PublicKey, PeerSpec] | None = None
    routes: frozenset[IPNetwork] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A peer left out of the desired state, and why; reported as a Warning Event."""

    node: str
    reason: str
    """A stable machine-readable reason: InvalidPeerConfig or PeerConflict."""
    message: str


INVALID = "InvalidPeerConfig"
CONFLICT = "PeerConflict"

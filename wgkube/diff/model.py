"""What the kernel reports, and the operations that change it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wgkube.domain.keys import PresharedKey, PrivateKey, PublicKey
from wgkube.domain.net import Endpoint, IPInterface, IPNetwork


@dataclass(frozen=True, slots=True)
class ObservedPeer:
    public_key: PublicKey
    endpoint: Endpoint | None = None
    allowed_ips: frozenset[IPNetwork] = frozenset()
    persistent_keepalive: int = 0
    preshared_key: PresharedKey | None = None
    """None when the kernel holds the all-zero key."""
    last_handshake: float = 0.0
    """Seconds since the epoch; 0 means never."""
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ObservedState:
    """One interface as read back. Routes are only those wg-kube owns on it."""

    exists: bool
    up: bool = False
    mtu: int | None = None
    addresses: frozenset[IPInterface] = frozenset()
    private_key: PrivateKey | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: Mapping[PublicKey, ObservedPeer] = field(default_factory=dict)
    routes: frozenset[IPNetwork] = frozenset()


ABSENT = ObservedState(exists=False)


@dataclass(frozen=True, slots=True)
class CreateLink:
    name: str


@dataclass(frozen=True, slots=True)
class SetMtu:
    mtu: int


@dataclass(frozen=True, slots=True)
class SetUp:
    pass


@dataclass(frozen=True, slots=True)
class AddAddress:
    address: IPInterface


@dataclass(frozen=True, slots=True)
class RemoveAddress:
    address: IPInterface


@dataclass(frozen=True, slots=True)
class ConfigureDevice:
    """Only the fields that differ are set; None means unchanged."""

    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None


@dataclass(frozen=True, slots=True)
class UpsertPeer:
    """Create or update a peer. None means "leave as it is" (a missing netlink attribute).

    allowed_ips, when given, replaces the whole list (replace_allowed_ips).
    persistent_keepalive=0 and an all-zero preshared key clear those settings.
    """

    public_key: PublicKey
    endpoint: Endpoint | None = None
    allowed_ips: tuple[IPNetwork, ...] | None = None
    persistent_keepalive: int | None = None
    preshared_key: PresharedKey | None = None
    new: bool = False


@dataclass(frozen=True, slots=True)
class RemovePeer:
    public_key: PublicKey


@dataclass(frozen=True, slots=True)
class AddRoute:
    destination: IPNetwork


@dataclass(frozen=True, slots=True)
class RemoveRoute:
    destination: IPNetwork


Operation = (
    CreateLink
    | SetMtu
    | SetUp
    | AddAddress
    | RemoveAddress
    | ConfigureDevice
    | UpsertPeer
    | RemovePeer
    | AddRoute
    | RemoveRoute
)

"""Small factories shared by the unit tests: deterministic keys, Nodes and records."""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

from wgkube.domain.annotations import Keys, PeerRecord
from wgkube.domain.keys import PresharedKey, PrivateKey, PublicKey
from wgkube.domain.net import Endpoint, IPInterface, IPNetwork

KEYS = Keys()
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def pub(n: int | str) -> PublicKey:
    """A deterministic public key. It need not be a curve point: only its bytes matter here."""
    return PublicKey(_digest(f"public-{n}"))


def priv(n: int | str) -> PrivateKey:
    return PrivateKey(_digest(f"private-{n}")).clamped()


def psk(n: int | str) -> PresharedKey:
    return PresharedKey(_digest(f"psk-{n}"))


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def nets(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def iface(text: str) -> IPInterface:
    return ipaddress.ip_interface(text)


def ep(text: str) -> Endpoint:
    return Endpoint.parse(text)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def record(
    node: str,
    key: PublicKey | int | str,
    *allowed: str,
    created: datetime | int | None = 0,
    endpoint: str | None = None,
) -> PeerRecord:
    return PeerRecord(
        node=node,
        public_key=key if isinstance(key, PublicKey) else pub(key),
        endpoint=None if endpoint is None else ep(endpoint),
        allowed_ips=nets(*allowed),
        created=at(created) if isinstance(created, int) else created,
    )


def node(
    name: str,
    annotations: dict[str, str] | None = None,
    *,
    labels: dict[str, str] | None = None,
    addresses: list[tuple[str, str]] | None = None,
    created: str | None = "2024-01-01T00:00:00Z",
) -> dict[str, Any]:
    """A Node body as the API server returns it (JSON decoded)."""
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if annotations is not None:
        metadata["annotations"] = annotations
    if created is not None:
        metadata["creationTimestamp"] = created
    return {
        "metadata": metadata,
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses or []]},
    }

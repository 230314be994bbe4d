"""An in-memory kernel with WireGuard's semantics, optionally kept in a JSON file.

The file lets a test inspect (and a restarted process adopt) the state of a device
driven by an operator running in another process. It is rewritten whole at every apply;
a journal instead (one JSON line per operation, appended) costs the change, not N: the
bench times one change at 10,000 peers with it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgkube.diff.model import (
    ABSENT,
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
from wgkube.domain.errors import DeviceNotFound, OperationRejected, RouteConflict
from wgkube.domain.keys import PresharedKey, PrivateKey, PublicKey
from wgkube.domain.net import Endpoint, IPNetwork

DEFAULT_MTU = 1420
MIN_MTU, MAX_MTU = 68, 65535


@dataclass
class _Device:
    up: bool = False
    mtu: int = DEFAULT_MTU
    addresses: set[str] = field(default_factory=set)
    private_key: str | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: set[str] = field(default_factory=set)
    owners: dict[str, str] | None = None
    """Allowed-ip -> peer key, built on first use; entries may be stale (checked)."""


class MemoryKernel:
    """Same contract as the real adapters; `state_path` shares state across processes."""

    name = "memory"

    def __init__(self, state_path: Path | None = None, journal_path: Path | None = None) -> None:
        self.writes = 0
        self._journal = journal_path
        self._pending_writes = 0
        self._path = state_path
        self._devices: dict[str, _Device] = {}
        self._foreign: dict[str, str] = {}
        """Routes somebody else owns (destination -> owner), as `add_foreign_route` made."""
        self._load()

    # -- persistence -------------------------------------------------------------------
    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        data = json.loads(self._path.read_text())
        self._devices = {
            name: _Device(
                up=d["up"],
                mtu=d["mtu"],
                addresses=set(d["addresses"]),
                private_key=d["private_key"],
                listen_port=d["listen_port"],
                fwmark=d["fwmark"],
                peers=d["peers"],
                routes=set(d["routes"]),
            )
            for name, d in data.get("devices", {}).items()
        }
        self._foreign = data.get("foreign_routes", {})

    def _save(self) -> None:
        if self._path is None:
            return
        previous = 0
        if self._path.exists():
            previous = json.loads(self._path.read_text()).get("writes", 0)
        data = {
            "writes": previous + self._pending_writes,
            "devices": {
                name: {
                    "up": d.up,
                    "mtu": d.mtu,
                    "addresses": sorted(d.addresses),
                    "private_key": d.private_key,
                    "listen_port": d.listen_port,
                    "fwmark": d.fwmark,
                    "peers": d.peers,
                    "routes": sorted(d.routes),
                }
                for name, d in self._devices.items()
            },
            "foreign_routes": self._foreign,
        }
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".memkernel-")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self._path)

    # -- the port ----------------------------------------------------------------------
    async def observe(self, ifname: str, *, device_only: bool = False) -> ObservedState:
        self._load()
        dev = self._devices.get(ifname)
        if dev is None:
            return ABSENT
        peers = {} if device_only else dev.peers
        return ObservedState(
            exists=True,
            up=dev.up,
            mtu=dev.mtu,
            addresses=frozenset(ipaddress.ip_interface(a) for a in dev.addresses),
            private_key=PrivateKey.parse(dev.private_key).clamped() if dev.private_key else None,
            listen_port=dev.listen_port,
            fwmark=dev.fwmark,
            peers={
                PublicKey.parse(k): ObservedPeer(
                    public_key=PublicKey.parse(k),
                    endpoint=Endpoint.parse(p["endpoint"]) if p["endpoint"] else None,
                    allowed_ips=frozenset(ipaddress.ip_network(n) for n in p["allowed_ips"]),
                    persistent_keepalive=p["keepalive"],
                    preshared_key=PresharedKey.parse(p["psk"]) if p["psk"] else None,
                    last_handshake=p.get("last_handshake", 0.0),
                    rx_bytes=p.get("rx_bytes", 0),
                    tx_bytes=p.get("tx_bytes", 0),
                )
                for k, p in peers.items()
            },
            routes=frozenset(() if device_only else map(ipaddress.ip_network, dev.routes)),
        )

    async def peers(self, ifname: str) -> Mapping[PublicKey, ObservedPeer] | None:
        observed = await self.observe(ifname)
        return observed.peers if observed.exists else None

    async def apply(self, ifname: str, ops: Sequence[Operation]) -> None:
        self._load()
        self._pending_writes = 0
        try:
            for op in ops:
                self._apply_one(ifname, op)
                self._pending_writes += 1
        finally:
            self.writes += self._pending_writes
            self._save()
            self._log(ifname, ops[: self._pending_writes])

    def _log(self, ifname: str, ops: Sequence[Operation]) -> None:
        """One line per operation applied, appended to the journal (when there is one)."""
        if self._journal is None or not ops:
            return
        now = time.time()
        lines = [
            json.dumps(
                {
                    "t": now,
                    "ifname": ifname,
                    "op": type(op).__name__,
                    **{f.name: _plain(getattr(op, f.name)) for f in dataclasses.fields(op)},
                }
            )
            for op in ops
        ]
        with self._journal.open("a") as fh:
            fh.write("\n".join(lines) + "\n")

    async def move_route(
        self, ifname: str, destination: IPNetwork, *, among: Sequence[str]
    ) -> None:
        self._load()
        if (owner := self._foreign.get(str(destination))) is not None:
            raise RouteConflict(
                f"route {destination} already exists and is not wg-kube's: {owner}; left as it is"
            )
        dev = self._devices.get(ifname)
        if dev is None:
            raise DeviceNotFound(f"interface {ifname} does not exist")
        for name in among:
            if name in self._devices:
                self._devices[name].routes.discard(str(destination))
        dev.routes.add(str(destination))
        self.writes += 1
        self._pending_writes = 1
        self._save()

    async def delete(self, ifname: str) -> None:
        self._load()
        self._pending_writes = 1 if self._devices.pop(ifname, None) is not None else 0
        self.writes += self._pending_writes
        self._save()

    async def close(self) -> None:
        return None

    # -- test hooks ----------------------------------------------------------------------
    def learn_endpoint(self, ifname: str, key: PublicKey, endpoint: Endpoint) -> None:
        """What WireGuard does when an authenticated packet arrives from a new address."""
        self._load()
        self._devices[ifname].peers[key.b64]["endpoint"] = str(endpoint)
        self._pending_writes = 0
        self._save()

    def add_foreign_route(self, net: IPNetwork, owner: str = "proto static dev eth0") -> None:
        """A route made by someone else (the kernel, DHCP, a person), outside any device."""
        self._load()
        self._foreign[str(net)] = owner
        self._pending_writes = 0
        self._save()

    def foreign_routes(self) -> dict[str, str]:
        self._load()
        return dict(self._foreign)

    def record_traffic(
        self, ifname: str, key: PublicKey, *, handshake: float, rx_bytes: int, tx_bytes: int
    ) -> None:
        """What a completed handshake and traffic leave in the kernel's peer counters."""
        self._load()
        peer = self._devices[ifname].peers[key.b64]
        peer.update(last_handshake=handshake, rx_bytes=rx_bytes, tx_bytes=tx_bytes)
        self._pending_writes = 0
        self._save()

    # -- semantics -------------------------------------------------------------------------
    def _apply_one(self, ifname: str, op: Operation) -> None:
        if isinstance(op, CreateLink):
            # Like the real adapters: an interface that exists is adopted as it is.
            self._devices.setdefault(op.name, _Device())
            return
        dev = self._devices.get(ifname)
        if dev is None:
            raise DeviceNotFound(f"interface {ifname} does not exist")
        match op:
            case SetMtu(mtu):
                if not MIN_MTU <= mtu <= MAX_MTU:  # as a TUN device answers
                    answer = "Invalid argument (errno 22)"
                    raise OperationRejected(f"set mtu {mtu}: {answer}", answer=answer)
                dev.mtu = mtu
            case SetUp():
                dev.up = True
            case AddAddress(address):
                dev.addresses.add(str(address))
            case RemoveAddress(address):
                dev.addresses.discard(str(address))
            case ConfigureDevice(private_key, listen_port, fwmark):
                if private_key is not None:
                    dev.private_key = private_key.clamped().b64
                if listen_port is not None:
                    dev.listen_port = listen_port
                if fwmark is not None:
                    dev.fwmark = fwmark
            case UpsertPeer():
                self._upsert(dev, op)
            case RemovePeer(key):
                dev.peers.pop(key.b64, None)
            case AddRoute(net):
                # Like the real adapters' exclusive add: another owner's route stays.
                if (owner := self._foreign.get(str(net))) is not None:
                    raise RouteConflict(
                        f"route {net} already exists and is not wg-kube's: {owner}; left as it is"
                    )
                dev.routes.add(str(net))
            case RemoveRoute(net):
                dev.routes.discard(str(net))

    @staticmethod
    def _upsert(dev: _Device, op: UpsertPeer) -> None:
        peer = dev.peers.setdefault(
            op.public_key.b64,
            {"endpoint": None, "allowed_ips": [], "keepalive": 0, "psk": None},
        )
        if op.endpoint is not None:
            peer["endpoint"] = str(op.endpoint)
        if op.persistent_keepalive is not None:
            peer["keepalive"] = op.persistent_keepalive
        if op.preshared_key is not None:
            peer["psk"] = None if op.preshared_key.is_zero else op.preshared_key.b64
        if op.allowed_ips is not None:
            wanted: list[IPNetwork] = list(op.allowed_ips)
            # The kernel's allowed-IPs trie is per device: a prefix moves to its new peer.
            taken = {str(n) for n in wanted}
            if dev.owners is None:  # prefix -> peer, so a move need not scan every peer
                dev.owners = {n: k for k, p in dev.peers.items() for n in p["allowed_ips"]}
            for other_key in {dev.owners[n] for n in taken if n in dev.owners}:
                other = dev.peers.get(other_key)
                if other_key != op.public_key.b64 and other is not None:
                    other["allowed_ips"] = [n for n in other["allowed_ips"] if n not in taken]
            for n in taken:
                dev.owners[n] = op.public_key.b64
            peer["allowed_ips"] = sorted(taken)


def _plain(value: Any) -> Any:
    """An operation's field as JSON: keys and networks as text, collections as sorted lists."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, PrivateKey | PresharedKey):
        return "(secret)"  # a journal is read by benches and people: no key material
    if isinstance(value, tuple | frozenset | set | list):
        return sorted(str(v) for v in value)
    if hasattr(value, "b64"):
        return str(value.b64)
    return str(value)

"""The kernel adapter: in-kernel WireGuard over generic netlink (pyroute2 AsyncWireGuard).

pyroute2's `set()` carries one peer per message. Here a run of peer changes is packed
into few WG_CMD_SET_DEVICE messages instead — one WGDEVICE_A_PEERS list each, cut before
its 16-bit attribute length overflows — which is what `wg setconf` does too.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import AsyncWireGuard
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.wireguard import (
    WG_CMD_SET_DEVICE,
    WG_GENL_VERSION,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    wgmsg,
)

from wgkube.diff.model import ConfigureDevice, ObservedPeer, RemovePeer, UpsertPeer
from wgkube.domain.errors import (
    DeviceNotFound,
    InterfaceTaken,
    OperationRejected,
    PortInUse,
)
from wgkube.domain.keys import PresharedKey, PrivateKey, PublicKey
from wgkube.domain.net import Endpoint, IPNetwork, shared_network
from wgkube.kernel.base import RtnlBackedKernel, WgDevice, WgOperation
from wgkube.kernel.port import MAIN_TABLE, ROUTE_PROTOCOL
from wgkube.kernel.rtnl import dump_messages, translate

MAX_PEERS_BYTES = 60_000
"""Encoded size at which a WGDEVICE_A_PEERS list is cut: its length field has 16 bits."""
MAX_PEERS_PER_MESSAGE = 500
"""Also cut by count, as measured safe (KERNEL-TESTS.md)."""
MAX_ALLOWED_IPS_PER_ENTRY = 1000
"""Allowed IPs of one peer per message entry (40 bytes each, within MAX_PEERS_BYTES)."""

# Encoded sizes (header included) used to cut messages before the length overflows.
_PEER_FIXED = 4 + 36 + 8  # nest header, public key, flags
_PEER_PSK = 36
_PEER_ENDPOINT = 4 + 28
_PEER_KEEPALIVE = 8
_ALLOWEDIPS_NEST = 4
_ALLOWEDIP = 4 + 8 + 20 + 8  # nest, family, address (up to 16 bytes), mask


class NetlinkKernel(RtnlBackedKernel):
    """The Kernel port over the in-kernel WireGuard module."""

    name = "kernel"

    def __init__(
        self,
        *,
        netns: str | None = None,
        route_protocol: int = ROUTE_PROTOCOL,
        route_table: int = MAIN_TABLE,
        max_peers_per_message: int = MAX_PEERS_PER_MESSAGE,
    ) -> None:
        super().__init__(netns=netns, route_protocol=route_protocol, route_table=route_table)
        self.max_peers_per_message = max_peers_per_message
        self._wg: AsyncWireGuard | None = None
        self.messages = 0
        """WG_CMD_SET_DEVICE messages sent (to see batching at work)."""

    async def _conn(self) -> AsyncWireGuard:
        if self._wg is None:
            wg = AsyncWireGuard(netns=self.netns, flags=0) if self.netns else AsyncWireGuard()
            try:
                await wg.setup_endpoint()
            except Exception as exc:
                wg.close()
                translate(exc, "open the wireguard generic netlink family")
            self._wg = wg
        return self._wg

    async def close(self) -> None:
        if self._wg is not None:
            self._wg.close()
            self._wg = None
        await super().close()

    # -- link ------------------------------------------------------------------------------
    async def _create_link(self, ifname: str) -> None:
        existing = await self.rtnl.link(ifname)
        if existing is not None:
            if existing.kind == "wireguard":
                return  # adopt: made by an earlier run or by hand
            raise InterfaceTaken(
                f"interface {ifname} exists and is a {existing.kind or 'link'}, not wireguard"
            )
        await self.rtnl.create_link(ifname, "wireguard")

    # -- read --------------------------------------------------------------------------------
    async def _wg_read(self, ifname: str) -> WgDevice:
        wg = await self._conn()
        dump = _DeviceDump()
        try:
            # Message by message: each is released (freed) once read, not held to the end.
            async for msg in dump_messages(await wg.info(ifname)):
                dump.add(msg)
        except NetlinkError as exc:
            translate(exc, f"read wireguard device {ifname}")
        device = dump.device()
        if device is None:
            raise DeviceNotFound(f"interface {ifname}: no wireguard device")
        return device

    # -- write -------------------------------------------------------------------------------
    async def _wg_write(self, ifname: str, ops: Sequence[WgOperation]) -> None:
        device: list[list[Any]] = []
        peers: list[dict[str, Any]] = []
        count = 0
        size = 0
        for op in ops:
            if isinstance(op, ConfigureDevice):
                if peers:  # device attributes belong to the message before these peers
                    await self._send(ifname, device, peers, count)
                    device, peers, count, size = [], [], 0, 0
                device.extend(_device_attrs(op))
                count += 1
                continue
            for attrs, peer_size in _peer_entries(op):
                if peers and (
                    size + peer_size > MAX_PEERS_BYTES or len(peers) >= self.max_peers_per_message
                ):
                    await self._send(ifname, device, peers, count)
                    device, peers, count, size = [], [], 0, 0
                peers.append({"attrs": attrs})
                size += peer_size
            count += 1
        if count:
            await self._send(ifname, device, peers, count)

    async def _send(
        self, ifname: str, device: list[list[Any]], peers: list[dict[str, Any]], count: int
    ) -> None:
        wg = await self._conn()
        msg = wgmsg()
        msg["cmd"] = WG_CMD_SET_DEVICE
        msg["version"] = WG_GENL_VERSION
        msg["attrs"].append(["WGDEVICE_A_IFNAME", ifname])
        msg["attrs"].extend(device)
        if peers:
            # One list only: with two WGDEVICE_A_PEERS attributes the kernel keeps the last.
            msg["attrs"].append(["WGDEVICE_A_PEERS", peers])
        try:
            # Messages go one at a time, each awaiting its ACK: never a burst that could
            # overflow the socket's receive buffer with ACKs.
            response = await wg.nlm_request(
                msg, msg_type=wg.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK
            )
            async for _ in response:
                pass
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise DeviceNotFound(f"interface {ifname} does not exist") from exc
            port = next((v for k, v in device if k == "WGDEVICE_A_LISTEN_PORT"), None)
            if exc.code == errno.EADDRINUSE and port is not None:
                raise PortInUse(int(port)) from exc
            translate(exc, f"configure wireguard device {ifname}")
        except ValueError as exc:
            # pyroute2 could not encode a value: that operation, not the device.
            what = f"configure wireguard device {ifname}"
            raise OperationRejected(f"{what}: {exc}", answer=str(exc)) from exc
        except OSError as exc:
            translate(exc, f"configure wireguard device {ifname}")
        self.messages += 1
        self.writes += count


def _device_attrs(op: ConfigureDevice) -> list[list[Any]]:
    attrs: list[list[Any]] = []
    if op.private_key is not None:
        attrs.append(["WGDEVICE_A_PRIVATE_KEY", op.private_key.b64])
    if op.listen_port is not None:
        attrs.append(["WGDEVICE_A_LISTEN_PORT", op.listen_port])
    if op.fwmark is not None:
        attrs.append(["WGDEVICE_A_FWMARK", op.fwmark])
    return attrs


def _peer_entries(op: UpsertPeer | RemovePeer) -> list[tuple[list[list[Any]], int]]:
    """The nested attributes of one peer, with their encoded size (an upper bound).

    A peer with more allowed IPs than fit one message is split as `wg` does: the first
    entry replaces the list, the following ones (same key, no flag) append to it.
    """
    head: list[list[Any]] = [["WGPEER_A_PUBLIC_KEY", op.public_key.b64]]
    if isinstance(op, RemovePeer):
        head.append(["WGPEER_A_FLAGS", WGPEER_F_REMOVE_ME])
        return [(head, _PEER_FIXED)]
    size = _PEER_FIXED
    if op.preshared_key is not None:
        head.append(["WGPEER_A_PRESHARED_KEY", op.preshared_key.b64])
        size += _PEER_PSK
    if op.endpoint is not None:
        head.append(
            ["WGPEER_A_ENDPOINT", {"addr": str(op.endpoint.host), "port": op.endpoint.port}]
        )
        size += _PEER_ENDPOINT
    if op.persistent_keepalive is not None:
        head.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", op.persistent_keepalive])
        size += _PEER_KEEPALIVE
    if op.allowed_ips is None:
        return [([*head, ["WGPEER_A_FLAGS", 0]], size)]
    chunks = [
        op.allowed_ips[i : i + MAX_ALLOWED_IPS_PER_ENTRY]
        for i in range(0, len(op.allowed_ips), MAX_ALLOWED_IPS_PER_ENTRY)
    ] or [()]
    entries = [
        (
            [
                *head,
                ["WGPEER_A_FLAGS", WGPEER_F_REPLACE_ALLOWEDIPS],
                ["WGPEER_A_ALLOWEDIPS", [_allowed_ip(n) for n in chunks[0]]],
            ],
            size + _ALLOWEDIPS_NEST + _ALLOWEDIP * len(chunks[0]),
        )
    ]
    for chunk in chunks[1:]:
        attrs: list[list[Any]] = [
            ["WGPEER_A_PUBLIC_KEY", op.public_key.b64],
            ["WGPEER_A_FLAGS", 0],
            ["WGPEER_A_ALLOWEDIPS", [_allowed_ip(n) for n in chunk]],
        ]
        entries.append((attrs, _PEER_FIXED + _ALLOWEDIPS_NEST + _ALLOWEDIP * len(chunk)))
    return entries


def _allowed_ip(net: IPNetwork) -> dict[str, Any]:
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return {
        "attrs": [
            ["WGALLOWEDIP_A_FAMILY", family],
            ["WGALLOWEDIP_A_IPADDR", net.network_address.packed],
            ["WGALLOWEDIP_A_CIDR_MASK", net.prefixlen],
        ]
    }


@dataclass
class _PeerDump:
    """One peer's attributes as plain values (never pyroute2's objects: the message is
    released once read), merged over the messages it spans."""

    key: PublicKey
    allowed: set[IPNetwork] = field(default_factory=set)
    preshared: PresharedKey | None = None
    endpoint: Endpoint | None = None
    keepalive: int = 0
    handshake: float = 0.0
    rx_bytes: int = 0
    tx_bytes: int = 0

    def merge(self, attr: Any) -> None:
        psk = attr.get_attr("WGPEER_A_PRESHARED_KEY")
        if psk is not None:
            preshared = PresharedKey.parse(psk.decode())
            self.preshared = None if preshared.is_zero else preshared
        endpoint = attr.get_attr("WGPEER_A_ENDPOINT")
        if endpoint is not None and endpoint.get("addr") not in (None, "0.0.0.0", "::"):
            self.endpoint = Endpoint(ipaddress.ip_address(endpoint["addr"]), int(endpoint["port"]))
        keepalive = attr.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")
        if keepalive is not None:
            self.keepalive = int(keepalive)
        handshake = attr.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
        if handshake is not None:
            self.handshake = handshake["tv_sec"] + handshake["tv_nsec"] / 1e9
        rx, tx = attr.get_attr("WGPEER_A_RX_BYTES"), attr.get_attr("WGPEER_A_TX_BYTES")
        if rx is not None:
            self.rx_bytes = int(rx)
        if tx is not None:
            self.tx_bytes = int(tx)
        for ip in attr.get_attr("WGPEER_A_ALLOWEDIPS") or ():
            family = ip.get_attr("WGALLOWEDIP_A_FAMILY")
            if family is None:
                continue
            # pyroute2 decodes the address as a hex dump ("0a:00:00:01").
            raw = bytes.fromhex(ip.get_attr("WGALLOWEDIP_A_IPADDR").replace(":", ""))
            mask = ip.get_attr("WGALLOWEDIP_A_CIDR_MASK")
            self.allowed.add(shared_network((raw, mask)))

    def observed(self) -> ObservedPeer:
        return ObservedPeer(
            public_key=self.key,
            endpoint=self.endpoint,
            allowed_ips=frozenset(self.allowed),
            persistent_keepalive=self.keepalive,
            preshared_key=self.preshared,
            last_handshake=self.handshake,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
        )


@dataclass
class _DeviceDump:
    """The device from its dump, one message at a time: a large device comes in several
    messages, and a peer whose allowed IPs do not fit continues in the next one under
    the same public key."""

    private_key: PrivateKey | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: dict[PublicKey, _PeerDump] = field(default_factory=dict)
    messages: int = 0

    def add(self, msg: Any) -> None:
        if not self.messages:
            private = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
            own = PrivateKey.parse(private.decode()) if private else None
            self.private_key = None if own is None or own.raw == bytes(32) else own
            self.listen_port = int(msg.get_attr("WGDEVICE_A_LISTEN_PORT") or 0)
            self.fwmark = int(msg.get_attr("WGDEVICE_A_FWMARK") or 0)
        self.messages += 1
        for attr in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = PublicKey.parse(attr.get_attr("WGPEER_A_PUBLIC_KEY").decode())
            acc = self.peers.get(key)
            if acc is None:
                acc = self.peers[key] = _PeerDump(key)
            acc.merge(attr)

    def device(self) -> WgDevice | None:
        """None: no message came (no such device)."""
        if not self.messages:
            return None
        return WgDevice(
            private_key=self.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            peers={k: p.observed() for k, p in self.peers.items()},
        )

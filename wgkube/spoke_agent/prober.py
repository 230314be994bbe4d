"""Data-path probes through each hub: a packet to ourselves that only a forwarding hub returns.

On each hub's interface the spoke writes, with an AF_PACKET socket (no routing: straight
into that WireGuard device), an IPv4/UDP packet whose source and destination are both
the spoke's own overlay address. WireGuard encrypts it to that interface's one peer, the
hub; the hub decrypts it, *routes* it (which needs IP forwarding), and encrypts it back
to this spoke, whose address is in its allowed-ips there. The same socket sees it come in.
So an answer needs the hub's underlay, its WireGuard UDP in both directions and its
forwarding — exactly what spoke-to-spoke traffic needs — and no other hub or spoke.

The returning packet is then dropped by the spoke's own stack (a source address of its
own arriving from outside is martian): nothing listens for it and nothing answers it.
A classic BPF filter on each socket keeps every other packet of the tunnel out of Python.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

log = logging.getLogger("wgkube.spoke.probe")

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
PROBE_PORT = 51899
"""UDP port of the probes (source and destination): what the socket filter matches."""
MAGIC = b"wgkube-probe"


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def probe_packet(address: IPv4Address, nonce: int, seq: int) -> bytes:
    """IPv4 (no options) + UDP to and from `address`; the UDP checksum 0 is allowed."""
    payload = MAGIC + struct.pack("!II", nonce, seq)
    udp = struct.pack("!HHHH", PROBE_PORT, PROBE_PORT, 8 + len(payload), 0) + payload
    src = address.packed
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0, src, src
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def parse_probe(packet: bytes, nonce: int) -> int | None:
    """The sequence number of one of our probes, or None for anything else."""
    start = 28 + len(MAGIC)
    if len(packet) < start + 8 or packet[28:start] != MAGIC:
        return None
    theirs, seq = struct.unpack("!II", packet[start : start + 8])
    return seq if theirs == nonce else None


def _filter() -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """`udp dst port PROBE_PORT` for packets starting at the IPv4 header (no link layer
    on a WireGuard device); the buffer must outlive the socket option call."""
    program = [
        (0x30, 0, 0, 9),  # ldb [9]           protocol
        (0x15, 0, 3, 17),  # jeq #17           UDP, else drop
        (0x28, 0, 0, 22),  # ldh [22]          UDP destination port (IHL 5)
        (0x15, 0, 1, PROBE_PORT),
        (0x06, 0, 0, 0xFFFF),  # ret: accept
        (0x06, 0, 0, 0),  # ret: drop
    ]
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    return fprog, buffer


@dataclass
class _Probe:
    sock: socket.socket
    address: IPv4Address
    answered: set[int] = field(default_factory=set)


class Prober:
    """One socket per hub interface: `send` a numbered probe, ask `answered` later."""

    def __init__(self) -> None:
        self.nonce = int.from_bytes(os.urandom(4), "big")
        self._probes: dict[str, _Probe] = {}

    def open(self, ifname: str, address: IPv4Address) -> None:
        """Start probing through `ifname` (idempotent). OSError when it cannot."""
        current = self._probes.get(ifname)
        if current is not None and current.address == address:
            return
        self.close(ifname)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        try:
            fprog, _buffer = _filter()
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            sock.bind((ifname, ETH_P_IP))
            sock.setblocking(False)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._read, ifname)
        except OSError:
            sock.close()
            raise
        self._probes[ifname] = _Probe(sock, address)

    def close(self, ifname: str) -> None:
        probe = self._probes.pop(ifname, None)
        if probe is not None:
            asyncio.get_running_loop().remove_reader(probe.sock.fileno())
            probe.sock.close()

    def close_all(self) -> None:
        for ifname in list(self._probes):
            self.close(ifname)

    def probing(self, ifname: str) -> bool:
        return ifname in self._probes

    def send(self, ifname: str, seq: int) -> None:
        """Send probe `seq`; an interface that vanished closes its socket (reopened by
        the caller's next `open`), and the probe simply goes unanswered."""
        probe = self._probes.get(ifname)
        if probe is None:
            return
        # Answers older than the previous probe no longer matter.
        probe.answered = {s for s in probe.answered if s >= seq - 1}
        try:
            probe.sock.sendto(probe_packet(probe.address, self.nonce, seq), (ifname, ETH_P_IP))
        except OSError as exc:
            log.debug("probe through %s not sent: %s", ifname, exc)
            self.close(ifname)

    def answered(self, ifname: str, seq: int) -> bool:
        probe = self._probes.get(ifname)
        return probe is not None and seq in probe.answered

    def _read(self, ifname: str) -> None:
        probe = self._probes.get(ifname)
        if probe is None:
            return
        while True:
            try:
                data, address = probe.sock.recvfrom(2048)
            except BlockingIOError:
                return
            except OSError as exc:
                log.debug("probe socket of %s failed: %s", ifname, exc)
                self.close(ifname)
                return
            if address[2] == socket.PACKET_OUTGOING:
                continue  # our own probe on its way out
            seq = parse_probe(data, self.nonce)
            if seq is not None:
                probe.answered.add(seq)

"""Data-path probes: through each hub, a packet to ourselves that only a forwarding hub
returns; from a hub, an echo that a spoke returns on the interface it came in by.

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

With several hubs, each hub also asks each spoke directly (wgkube.operator.relay): it
writes an echo request (to ECHO_PORT) into its own WireGuard device, and the spoke's
probe socket on the interface it arrives by writes the reply back into that same
interface (not by the spoke's routes, which point at its active hub), so a reply means
this hub reaches the spoke and the spoke reaches it, through no other hub.
"""

from __future__ import annotations

import asyncio
import contextlib
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
ECHO_PORT = 51898
"""UDP port a spoke answers hubs' echo requests on (on its probe sockets)."""
REPLY_PORT = 51897
"""UDP port of a hub's echo requests (source), so the replies' destination."""
ECHO_MAGIC = b"wgkube-echo"


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def _udp_packet(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ident: int
) -> bytes:
    """IPv4 (no options) + UDP; the UDP checksum 0 is allowed over IPv4."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, 64, 17, 0, src, dst
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def probe_packet(address: IPv4Address, nonce: int, seq: int) -> bytes:
    """IPv4/UDP to and from `address` (PROBE_PORT both ways)."""
    payload = MAGIC + struct.pack("!II", nonce, seq)
    return _udp_packet(address.packed, address.packed, PROBE_PORT, PROBE_PORT, payload, seq)


def echo_request(
    source: IPv4Address, target: IPv4Address, nonce: int, seq: int, path: int
) -> bytes:
    """A hub's echo request to a spoke: `path` says which device it was written into."""
    payload = ECHO_MAGIC + struct.pack("!IIH", nonce, seq, path)
    return _udp_packet(source.packed, target.packed, REPLY_PORT, ECHO_PORT, payload, seq)


def echo_reply(packet: bytes) -> bytes | None:
    """The answer to an echo request (addresses and ports swapped, payload kept), or None
    for anything else."""
    if len(packet) < 28 + len(ECHO_MAGIC) or packet[0] != 0x45 or packet[9] != 17:
        return None
    sport, dport = struct.unpack("!HH", packet[20:24])
    if dport != ECHO_PORT or packet[28 : 28 + len(ECHO_MAGIC)] != ECHO_MAGIC:
        return None
    ident = struct.unpack("!H", packet[4:6])[0]
    return _udp_packet(packet[16:20], packet[12:16], ECHO_PORT, sport, packet[28:], ident)


def parse_echo_reply(payload: bytes, nonce: int) -> tuple[int, int] | None:
    """(seq, path) of an answer to one of our echo requests (its UDP payload), or None."""
    start = len(ECHO_MAGIC)
    if len(payload) < start + 10 or payload[:start] != ECHO_MAGIC:
        return None
    theirs, seq, path = struct.unpack("!IIH", payload[start : start + 10])
    return (seq, path) if theirs == nonce else None


def parse_probe(packet: bytes, nonce: int) -> int | None:
    """The sequence number of one of our probes, or None for anything else."""
    start = 28 + len(MAGIC)
    if len(packet) < start + 8 or packet[28:start] != MAGIC:
        return None
    theirs, seq = struct.unpack("!II", packet[start : start + 8])
    return seq if theirs == nonce else None


def _filter() -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """`udp dst port PROBE_PORT or ECHO_PORT` for packets starting at the IPv4 header (no
    link layer on a WireGuard device); the buffer must outlive the socket option call."""
    program = [
        (0x30, 0, 0, 9),  # ldb [9]           protocol
        (0x15, 0, 4, 17),  # jeq #17           UDP, else drop
        (0x28, 0, 0, 22),  # ldh [22]          UDP destination port (IHL 5)
        (0x15, 1, 0, PROBE_PORT),  # a probe: accept
        (0x15, 0, 1, ECHO_PORT),  # a hub's echo request: accept, else drop
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

    def __init__(self, *, answer_echoes: bool = True) -> None:
        self.nonce = int.from_bytes(os.urandom(4), "big")
        self.answer_echoes = answer_echoes
        """A spoke answers hubs' echoes; a hub must not (another hub's echo to a spoke
        through it would be answered by it, not by the spoke)."""
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

    def send_packet(self, ifname: str, packet: bytes) -> None:
        """Write `packet` (an IPv4 datagram) into `ifname` as it is: a hub's echo request."""
        probe = self._probes.get(ifname)
        if probe is None:
            return
        try:
            probe.sock.sendto(packet, (ifname, ETH_P_IP))
        except OSError as exc:
            log.debug("echo through %s not sent: %s", ifname, exc)
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
            reply = echo_reply(data) if self.answer_echoes else None
            if reply is not None:
                # A hub asks whether it reaches us: answered into the interface it came
                # by, so the answer goes back to that hub whichever hub is active.
                with contextlib.suppress(OSError):
                    probe.sock.sendto(reply, (ifname, ETH_P_IP))
                continue
            seq = parse_probe(data, self.nonce)
            if seq is not None:
                probe.answered.add(seq)

"""The hairpin probe's packet: a valid IPv4/UDP datagram to and from the spoke itself."""

from __future__ import annotations

import ipaddress
import struct

from wgkube.kernel.probe import (
    ECHO_PORT,
    PROBE_PORT,
    REPLY_PORT,
    _checksum,
    echo_reply,
    echo_request,
    parse_echo_reply,
    parse_probe,
    probe_packet,
)

ADDRESS = ipaddress.IPv4Address("100.96.0.11")


def test_the_probe_goes_from_the_spoke_to_the_spoke_over_udp_with_a_valid_header() -> None:
    packet = probe_packet(ADDRESS, nonce=7, seq=42)
    version_ihl, _, total, _, _, ttl, proto, _, src, dst = struct.unpack(
        "!BBHHHBBH4s4s", packet[:20]
    )
    assert (version_ihl, total, proto, ttl) == (0x45, len(packet), 17, 64)
    assert src == dst == ADDRESS.packed
    assert _checksum(packet[:20]) == 0, "a header with its checksum sums to zero"
    sport, dport, length, _ = struct.unpack("!HHHH", packet[20:28])
    assert (sport, dport, length) == (PROBE_PORT, PROBE_PORT, len(packet) - 20)


def test_only_our_own_probes_are_recognised_with_their_sequence_number() -> None:
    assert parse_probe(probe_packet(ADDRESS, nonce=7, seq=42), nonce=7) == 42
    assert parse_probe(probe_packet(ADDRESS, nonce=8, seq=42), nonce=7) is None
    assert parse_probe(b"\x45" + b"\x00" * 60, nonce=7) is None
    assert parse_probe(probe_packet(ADDRESS, nonce=7, seq=1)[:-1], nonce=7) is None


HUB = ipaddress.IPv4Address("100.96.0.254")


def test_a_spoke_answers_a_hubs_echo_to_the_hub_with_the_same_payload() -> None:
    request = echo_request(HUB, ADDRESS, nonce=7, seq=42, path=2)
    reply = echo_reply(request)
    assert reply is not None
    assert _checksum(reply[:20]) == 0
    src, dst = struct.unpack("!4s4s", reply[12:20])
    assert (src, dst) == (ADDRESS.packed, HUB.packed)
    sport, dport = struct.unpack("!HH", reply[20:24])
    assert (sport, dport) == (ECHO_PORT, REPLY_PORT)
    assert parse_echo_reply(reply[28:], nonce=7) == (42, 2)
    assert parse_echo_reply(reply[28:], nonce=8) is None


def test_only_echo_requests_are_answered() -> None:
    assert echo_reply(probe_packet(ADDRESS, nonce=7, seq=1)) is None
    reply = echo_reply(echo_request(HUB, ADDRESS, nonce=7, seq=1, path=0))
    assert reply is not None
    assert echo_reply(reply) is None, "a reply is not answered again"
    assert echo_reply(b"\x45" + b"\x00" * 60) is None
    assert parse_echo_reply(b"wgkube-echo", nonce=7) is None

"""wireguard-go's UAPI replies, parsed as they arrive."""

from __future__ import annotations

import errno

import pytest

from wgkube.domain.errors import KernelError, OperationRejected, PortInUse
from wgkube.kernel.userspace import _parse_reply, _Reply, _reply_pairs

KEY_HEX = "11" * 32


def complete(raw: bytes) -> bool:
    reply = _Reply("wg0", ["get=1"])
    reply.feed(raw)
    return reply.complete


def test_a_reply_is_complete_only_with_its_errno_line_and_the_blank_line() -> None:
    assert complete(b"errno=0\n\n")
    assert complete(b"listen_port=51820\nerrno=0\n\n")
    assert not complete(b"listen_port=51820\nerrno=0\n")
    assert not complete(b"listen_port=51820\n")
    assert not complete(b"")
    assert not complete(b"public_key=" + KEY_HEX.encode() + b"\n\n")


def test_a_reply_fed_in_pieces_cut_anywhere_gives_the_same_pairs() -> None:
    raw = (
        f"private_key={'22' * 32}\nlisten_port=51820\npublic_key={KEY_HEX}\n"
        "endpoint=192.0.2.1:51820\nallowed_ip=10.1.0.0/24\nerrno=0\n\n"
    ).encode()
    whole = _reply_pairs("wg0", ["get=1"], raw)
    assert len(whole) == 5
    for size in (1, 2, 7, 64, len(raw)):
        reply = _Reply("wg0", ["get=1"])
        pairs = []
        for at in range(0, len(raw), size):
            assert not reply.complete
            pairs += reply.feed(raw[at : at + size])
        assert reply.complete
        assert pairs == whole, size


def test_a_get_reply_gives_the_device_and_its_peers() -> None:
    raw = (
        f"private_key={'22' * 32}\nlisten_port=51820\npublic_key={KEY_HEX}\n"
        "endpoint=192.0.2.1:51820\nallowed_ip=10.1.0.0/24\nallowed_ip=10.2.0.0/24\n"
        "last_handshake_time_sec=0\nerrno=0\n\n"
    ).encode()
    device = _parse_reply("wg0", raw)
    assert device.listen_port == 51820
    (peer,) = device.peers.values()
    assert {str(n) for n in peer.allowed_ips} == {"10.1.0.0/24", "10.2.0.0/24"}


def test_errors_in_a_reply_are_what_they_mean() -> None:
    taken = f"errno=-{errno.EADDRINUSE}\n\n".encode()
    with pytest.raises(PortInUse):
        _reply_pairs("wg0", ["set=1", "listen_port=51821"], taken)
    with pytest.raises(OperationRejected):
        _reply_pairs("wg0", ["set=1"], f"errno=-{errno.EINVAL}\n\n".encode())
    with pytest.raises(KernelError, match="without errno"):
        _reply_pairs("wg0", ["get=1"], b"listen_port=1\n")
    with pytest.raises(KernelError, match="cannot parse"):
        _parse_reply("wg0", b"public_key=zz\nerrno=0\n\n")

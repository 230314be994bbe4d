"""A long netlink dump gives the event loop turns while it is decoded, and is freed as
it is read."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import ipaddress
from collections.abc import AsyncIterator, Iterator
from socket import AF_INET
from typing import Any

from pyroute2.netlink import nlmsg_base
from pyroute2.netlink.generic.wireguard import wgmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint
from wgkube.kernel.netlink import _allowed_ip, _DeviceDump
from wgkube.kernel.rtnl import DUMP_TURN, dump_messages


async def queued(n: int) -> AsyncIterator[int]:
    """A dump whose answers are all there already: it never suspends by itself."""
    for i in range(n):
        yield i


async def test_a_dump_of_queued_answers_lets_other_tasks_run_while_it_is_read() -> None:
    turns: list[int] = []
    read = 0

    async def other() -> None:
        while True:
            turns.append(read)
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    async for _ in dump_messages(queued(10 * DUMP_TURN)):
        read += 1
    task.cancel()
    during = [at for at in turns if 0 < at < 10 * DUMP_TURN]
    assert len(during) >= 9, f"the other task ran at {turns}"
    assert max(b - a for a, b in zip([0, *during], [*during, read], strict=True)) <= DUMP_TURN


def route_messages(n: int) -> list[bytes]:
    """Route answers as the kernel sends them (rtmsg with a destination, an output
    device, a gateway and a multipath nest)."""
    out = []
    for i in range(n):
        msg = rtmsg()
        msg["family"] = AF_INET
        msg["dst_len"] = 32
        msg["proto"] = 87
        msg["type"] = 1
        msg["attrs"] = [
            ["RTA_DST", f"100.64.{i // 250}.{i % 250}"],
            ["RTA_OIF", 7],
            ["RTA_TABLE", 254],
            ["RTA_MULTIPATH", [{"oif": 7, "attrs": [["RTA_GATEWAY", "198.51.100.1"]]}]],
        ]
        msg.encode()
        out.append(bytes(msg.data))
    return out


def device_messages(n: int) -> list[bytes]:
    """A WireGuard device dump of n peers in messages of at most 100 peers."""
    out = []
    for first in range(0, n, 100):
        msg = wgmsg()
        msg["cmd"] = 0
        msg["version"] = 1
        peers = [
            {
                "attrs": [
                    ["WGPEER_A_PUBLIC_KEY", base64.b64encode(i.to_bytes(32, "big"))],
                    ["WGPEER_A_ENDPOINT", {"addr": f"198.18.0.{i % 250}", "port": 51820}],
                    ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000 + i, "tv_nsec": 0}],
                    ["WGPEER_A_RX_BYTES", i],
                    [
                        "WGPEER_A_ALLOWEDIPS",
                        [_allowed_ip(ipaddress.ip_network(f"100.64.0.{i % 250}/32"))],
                    ],
                ]
            }
            for i in range(first, min(n, first + 100))
        ]
        msg["attrs"] = [["WGDEVICE_A_LISTEN_PORT", 51820], ["WGDEVICE_A_PEERS", peers]]
        msg.encode()
        out.append(bytes(msg.data))
    return out


async def decoded(kind: type[nlmsg_base], raw: list[bytes]) -> AsyncIterator[Any]:
    """The answers as pyroute2's socket hands them out: decoded, one at a time."""
    for data in raw:
        msg = kind(data)
        msg.decode()
        yield msg


def live_messages() -> int:
    return sum(isinstance(o, nlmsg_base) for o in gc.get_objects())


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()  # the collector must not be what frees them
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


async def test_a_route_dump_is_freed_as_it_is_read_not_left_to_the_collector() -> None:
    raw = route_messages(500)
    with collector_off():
        before = live_messages()
        found = []
        async for msg in dump_messages(decoded(rtmsg, raw)):
            hops = msg.get_attr("RTA_MULTIPATH") or ()
            found.append((msg.get_attr("RTA_DST"), [h.get_attr("RTA_GATEWAY") for h in hops]))
        del msg, hops  # the reader's last
        assert live_messages() - before == 0
        assert gc.collect() == 0, "a cycle was left for the collector"
    assert found[499] == ("100.64.1.249", ["198.51.100.1"])


async def test_a_message_not_released_is_a_cycle_the_collector_must_free() -> None:
    """The control: pyroute2's messages are cycles, so the test above can fail."""
    (data,) = route_messages(1)
    with collector_off():
        msg = rtmsg(data)
        msg.decode()
        assert msg.get_attr("RTA_MULTIPATH")
        del msg
        assert gc.collect() > 0


async def test_a_device_dump_is_decoded_message_by_message_and_freed() -> None:
    raw = device_messages(250)
    with collector_off():
        before = live_messages()
        dump = _DeviceDump()
        async for msg in dump_messages(decoded(wgmsg, raw)):
            dump.add(msg)
            assert live_messages() - before <= 2 * 100 * 8, "more than a message held"
        del msg
        device = dump.device()
        assert live_messages() - before == 0
        assert gc.collect() == 0, "a cycle was left for the collector"
    assert device is not None
    assert device.listen_port == 51820
    assert len(device.peers) == 250
    peer = device.peers[PublicKey((249).to_bytes(32, "big"))]
    assert peer.endpoint == Endpoint(ipaddress.ip_address("198.18.0.249"), 51820)
    assert peer.allowed_ips == frozenset({ipaddress.ip_network("100.64.0.249/32")})
    assert peer.last_handshake == 1700000249.0
    assert peer.rx_bytes == 249


def test_no_message_is_no_device() -> None:
    assert _DeviceDump().device() is None

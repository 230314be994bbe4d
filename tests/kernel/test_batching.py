"""Many peer changes go into few netlink messages, and that is what makes them fast."""

from __future__ import annotations

import ipaddress
import sys
import time

import pytest

from tests.kernel.conftest import skip_unless_backend, unique_ifname
from wgkube.diff.model import ConfigureDevice, CreateLink, RemovePeer, UpsertPeer
from wgkube.domain.keys import PrivateKey
from wgkube.kernel.netlink import NetlinkKernel
from wgkube.testing.netns import netns

PEERS = 1000


def upserts(first_octet: int) -> list[UpsertPeer]:
    return [
        UpsertPeer(
            PrivateKey.generate().public_key(),
            allowed_ips=(ipaddress.ip_network(f"{first_octet}.{i // 250}.{i % 250}.0/24"),),
            new=True,
        )
        for i in range(PEERS)
    ]


@pytest.mark.kernel
async def test_batched_peer_messages_beat_one_message_per_peer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await skip_unless_backend("kernel")
    with netns("wgk-batch") as ns:
        ifname = unique_ifname()
        batched = NetlinkKernel(netns=ns.name)
        single = NetlinkKernel(netns=ns.name, max_peers_per_message=1)
        try:
            await batched.apply(
                ifname, [CreateLink(ifname), ConfigureDevice(PrivateKey.generate())]
            )
            start = time.monotonic()
            await single.apply(ifname, upserts(10))
            one_each = time.monotonic() - start
            start = time.monotonic()
            await batched.apply(ifname, upserts(11))
            in_batches = time.monotonic() - start
            assert single.messages == PEERS
            assert batched.messages == 1 + PEERS // 500
            assert len((await batched.observe(ifname)).peers) == 2 * PEERS
            removals = [RemovePeer(k) for k in (await batched.observe(ifname)).peers]
            await batched.apply(ifname, removals)
            assert (await batched.observe(ifname)).peers == {}
        finally:
            await batched.close()
            await single.close()
    with capsys.disabled():
        print(
            f"\n{PEERS} peers: one message each {one_each:.2f}s, in messages of 500 "
            f"{in_batches:.2f}s ({one_each / in_batches:.1f}x)"
        )
    # Emulated timings vary up to 2x between runs; measured 2-4x (1000 peers).
    assert in_batches < one_each


@pytest.mark.parametrize(
    ("destination", "table"),
    [("10.9.0.0/24", 254), ("fd00:9::/64", 254), ("10.9.1.1/32", 1000), ("10.9.2.0/24", 100)],
)
async def test_a_batched_route_request_is_the_one_pyroute2s_route_add_sends(
    destination: str, table: int
) -> None:
    """Rtnl.add_routes makes its requests from one pyroute2 encoding per family
    (RouteRequests): byte for byte what `route("add", ...)` sends."""
    await skip_unless_backend("userspace")
    from pyroute2 import AsyncIPRoute

    from wgkube.kernel.rtnl import RouteRequests

    with netns("wgk-req") as ns:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ipr = AsyncIPRoute(netns=ns.name, flags=0)
        try:
            await ipr.setup_endpoint()
            (index,) = await ipr.link_lookup(ifname="eth0")
            sent: list[bytes] = []
            send = ipr.send

            def recording(data: bytes) -> int:
                sent.append(bytes(data))
                return int(send(data))

            ipr.send = recording
            with pytest.raises(Exception, match="Network is down"):  # eth0 is down: no route
                await ipr.route("add", dst=destination, oif=index, table=table, proto=87)
            (theirs,) = sent
            encoder = RouteRequests(ipr, index, table=table, protocol=87)
            # A route of the other family first: each family has its own template.
            other = "fd00:1::/48" if "." in destination else "10.1.2.0/24"
            await encoder.encode(ipaddress.ip_network(other), 1)
            seq = int.from_bytes(theirs[8:12], sys.byteorder)
            ours = await encoder.encode(ipaddress.ip_network(destination), seq)
        finally:
            ipr.close()
    assert ours == theirs


async def test_batched_route_adds_take_no_number_of_pyroute2s_pool() -> None:
    """The batch's sequence numbers are its own (OWN_SEQ_BASE up): pyroute2's pool neither
    gives them nor bans them afterwards, and its own requests on the socket still work,
    also while a batch is answered. Only a batch's last request is acked (the others
    are answered only when refused: test_foreign_routes)."""
    await skip_unless_backend("userspace")
    import asyncio

    from wgkube.kernel.rtnl import ADD_BATCH, OWN_SEQ_BASE, Rtnl

    with netns("wgk-seq") as ns:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ns.ip("link", "set", "eth0", "up")
        rtnl = Rtnl(ns.name)
        try:
            index = await rtnl.index("eth0")
            ipr = await rtnl._conn()
            sent: list[int] = []
            send = ipr.send

            def recording(data: bytes) -> int:
                sent.append(int.from_bytes(data[8:12], sys.byteorder))
                return int(send(data))

            ipr.send = recording
            answered: list[int] = []
            put = ipr.msg_queue.put_nowait

            def answer(tag: int, data: bytes) -> None:
                answered.append(tag)
                put(tag, data)

            ipr.msg_queue.put_nowait = answer
            banned = len(ipr.addr_pool.ban)
            nets = [ipaddress.ip_network(f"10.9.{i // 250}.{i % 250}/32") for i in range(600)]
            landed = 0

            def count() -> None:
                nonlocal landed
                landed += 1

            adding = asyncio.create_task(
                rtnl.add_routes(index, nets, table=254, protocol=87, landed=count)
            )
            links = [await rtnl.link("eth0") for _ in range(5)]  # pyroute2's own numbers
            await adding
            assert landed == len(nets)
            assert all(link is not None and link.index == index for link in links)
            assert len(await rtnl.routes(index, table=254, protocol=87)) == len(nets)
            assert all(item["addr"] < OWN_SEQ_BASE for item in ipr.addr_pool.ban)
            assert len(ipr.addr_pool.ban) - banned < ADD_BATCH, "600 requests banned nothing"
            assert len(sent) >= len(nets) // ADD_BATCH
            ours = {seq for seq in sent if seq >= OWN_SEQ_BASE}
            assert ours, "the batches carry numbers of ours"
            acks = [tag for tag in answered if tag >= OWN_SEQ_BASE]
            assert len(acks) == -(-len(nets) // ADD_BATCH), "one ack a batch: its last request"
        finally:
            rtnl.close()

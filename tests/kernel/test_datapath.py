"""Packets really cross a tunnel configured only through the adapters, and keep crossing
while the hub's peers change in place."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.kernel.conftest import make_adapter, skip_unless_backend, unique_ifname
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.diff.plan import plan
from wgkube.domain.keys import PrivateKey
from wgkube.domain.net import Endpoint
from wgkube.kernel.port import Kernel
from wgkube.testing.netns import NetNS, PingStream, add_veth, create_netns, delete_netns, ping

net = ipaddress.ip_network
iface = ipaddress.ip_interface

HUB_UNDERLAY, SPOKE_UNDERLAY = "192.168.77.1", "192.168.77.2"
HUB_TUNNEL, SPOKE_TUNNEL = "100.96.0.1", "100.96.0.2"
PORT = 51820

BACKENDS = [
    pytest.param("kernel", marks=pytest.mark.kernel, id="kernel"),
    pytest.param("userspace", marks=pytest.mark.userspace, id="userspace"),
]


@dataclass
class Side:
    ns: NetNS
    kernel: Kernel
    desired: DesiredState

    async def converge(self, desired: DesiredState) -> None:
        self.desired = desired
        ifname = desired.device.name
        await self.kernel.apply(ifname, plan(desired, await self.kernel.observe(ifname)))
        assert plan(desired, await self.kernel.observe(ifname)) == ()


@dataclass
class Tunnel:
    hub: Side
    spoke: Side


def _state(
    ifname: str, key: PrivateKey, address: str, port: int | None, *peers: PeerSpec
) -> DesiredState:
    return DesiredState(
        device=DeviceSpec(
            name=ifname, private_key=key, listen_port=port, addresses=(iface(f"{address}/32"),)
        ),
        peers={p.public_key: p for p in peers},
        routes=frozenset(n for p in peers for n in p.allowed_ips),
    )


@pytest.fixture(params=BACKENDS)
async def tunnel(request: pytest.FixtureRequest) -> AsyncIterator[Tunnel]:
    """Hub and spoke namespaces joined by a veth, a WireGuard device in each, set up
    only through desired state, plan and apply (routes to the peer included)."""
    backend: str = request.param
    await skip_unless_backend(backend)
    hub_ns, spoke_ns = create_netns("wgk-hub"), create_netns("wgk-spoke")
    hub_if, spoke_if = unique_ifname("wgh"), unique_ifname("wgs")
    kernels: list[Kernel] = []
    try:
        add_veth(hub_ns, "veth-h", f"{HUB_UNDERLAY}/24", spoke_ns, "veth-s", f"{SPOKE_UNDERLAY}/24")
        hub_key, spoke_key = PrivateKey.generate(), PrivateKey.generate()
        hub = Side(
            hub_ns,
            make_adapter(backend, hub_ns, state=None),
            _state(
                hub_if,
                hub_key,
                HUB_TUNNEL,
                PORT,
                PeerSpec(spoke_key.public_key(), None, (net(f"{SPOKE_TUNNEL}/32"),)),
            ),
        )
        spoke = Side(
            spoke_ns,
            make_adapter(backend, spoke_ns, state=None),
            _state(
                spoke_if,
                spoke_key,
                SPOKE_TUNNEL,
                None,
                PeerSpec(
                    hub_key.public_key(),
                    Endpoint.parse(f"{HUB_UNDERLAY}:{PORT}"),
                    (net(f"{HUB_TUNNEL}/32"),),
                    persistent_keepalive=25,
                ),
            ),
        )
        kernels += [hub.kernel, spoke.kernel]
        await hub.converge(hub.desired)
        await spoke.converge(spoke.desired)
        yield Tunnel(hub, spoke)
    finally:
        for kernel, ifname in zip(kernels, (hub_if, spoke_if), strict=False):
            await kernel.delete(ifname)
            await kernel.close()
        delete_netns(hub_ns)
        delete_netns(spoke_ns)


async def test_a_ping_crosses_the_tunnel(tunnel: Tunnel) -> None:
    # The first packet waits for the handshake; a few more show the path stays up.
    result = await asyncio.to_thread(ping, tunnel.spoke.ns, HUB_TUNNEL, count=5, interval=0.2)
    assert result.received >= 4, result.output
    peers = (await tunnel.hub.kernel.observe(tunnel.hub.desired.device.name)).peers
    (spoke_peer,) = peers.values()
    assert spoke_peer.last_handshake > 0
    assert spoke_peer.endpoint is not None
    assert str(spoke_peer.endpoint.host) == SPOKE_UNDERLAY  # learned from the handshake


async def test_adding_and_removing_200_peers_in_place_loses_no_packet(tunnel: Tunnel) -> None:
    hub = tunnel.hub
    warmup = await asyncio.to_thread(ping, tunnel.spoke.ns, HUB_TUNNEL, count=3, interval=0.2)
    assert warmup.received >= 2, warmup.output
    base = hub.desired
    assert base.peers is not None
    extra = [
        PeerSpec(
            PrivateKey.generate().public_key(),
            Endpoint.parse(f"192.0.2.{i % 250 + 1}:{PORT}"),
            (net(f"10.{100 + i // 250}.{i % 250}.0/24"),),
        )
        for i in range(200)
    ]
    grown = DesiredState(
        device=base.device,
        peers={**base.peers, **{p.public_key: p for p in extra}},
        routes=base.routes | {n for p in extra for n in p.allowed_ips},
    )
    pinger = await PingStream.start(tunnel.spoke.ns, HUB_TUNNEL, interval=0.01)
    try:
        await pinger.wait_for_replies(10)
        await hub.converge(grown)
        observed = await hub.kernel.observe(base.device.name)
        assert len(observed.peers) == 201
        await hub.converge(base)
        # Replies to requests sent after the churn prove every request before them.
        await pinger.wait_for_replies(len(pinger.replies) + 20)
    finally:
        result = await pinger.stop()
    assert pinger.missing == set(), result.output[-2000:]
    assert len(pinger.replies) >= 30

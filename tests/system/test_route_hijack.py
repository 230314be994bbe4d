"""No route hijack, on either side, with real processes over real WireGuard.

A hub that advertises a spoke's own connected subnet, a Node that claims the hub's
subnet, the API server's address or another spoke's endpoint: the routes that belong to
someone else stay exactly as they were, the offenders get a PeerConflict Event, and the
tunnels of everyone else carry on without losing a packet.

Runs with wireguard-go on the host (marker `userspace`) and kernel WireGuard inside the
test VM (marker `kernel`); the API is the emulator: the point here is routes.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.test_hub_and_spokes import PREFIX, skip_unless, until
from wgkube.domain import announcement
from wgkube.domain.keys import PrivateKey
from wgkube.testing.lab import HUB_WG, SLOW, Lab, Node
from wgkube.testing.netns import NetNS, PingStream

BACKENDS = [
    pytest.param("kernel", marks=pytest.mark.kernel, id="kernel"),
    pytest.param("userspace", marks=pytest.mark.userspace, id="userspace"),
]
SPOKE_LAN = "198.18.7.0/24"
"""A subnet connected to spoke-1 alone (its `lan0`): the kernel's route, not ours."""


def routes_of_others(node: Node) -> set[str]:
    """`ip route show table all` (both families) without the WireGuard device's lines,
    and without IPv6 link-local ones: the kernel adds those on its own schedule (after
    duplicate address detection), and no allowed-ips can reach them."""
    ns = NetNS(node.ns)
    lines = ns.ip("route", "show", "table", "all").stdout.splitlines()
    lines += ns.ip("-6", "route", "show", "table", "all").stdout.splitlines()
    return {
        line.strip()
        for line in lines
        if line.strip()
        and node.ifname not in line
        and "proto 87" not in line
        and "fe80::" not in line
    }


async def settled(node: Node) -> set[str]:
    """The routes once the kernel has finished adding its own (IPv6 link-local ones come
    a moment after a link goes up)."""
    last = routes_of_others(node)
    for _ in range(50):
        await asyncio.sleep(0.3)
        now = routes_of_others(node)
        if now == last:
            return now
        last = now
    pytest.fail(f"the routes of {node.name} never settled")


def claim(lab: Lab, name: str, allowed_ips: str) -> None:
    """A peer Node claiming `allowed_ips`, as any node may write on its own Node."""
    assert lab.api is not None
    lab.api.create_node(
        name,
        labels={PREFIX + "peer": "true"},
        annotations={
            PREFIX + "public-key": PrivateKey.generate().public_key().b64,
            PREFIX + "allowed-ips": allowed_ips,
        },
    )


async def conflict_event(lab: Lab, node: str, within: float = 30.0) -> dict[str, Any]:
    assert lab.api is not None
    api = lab.api
    found: list[dict[str, Any]] = []

    async def posted() -> bool:
        found[:] = [e for e in api.events(node) if e.get("reason") == "PeerConflict"]
        return bool(found)

    await until(f"a PeerConflict Event on node {node}", posted, within=within)
    event = found[0]
    assert event["type"] == "Warning"
    return event


def hub_kernel(node: Node) -> tuple[set[str], set[str]]:
    """Every route, and every peer with its allowed-ips (wg lists peers in no fixed order)."""
    ns = NetNS(node.ns)
    routes = ns.ip("route", "show", "table", "all").stdout.splitlines()
    routes += ns.ip("-6", "route", "show", "table", "all").stdout.splitlines()
    peers = ns.run("wg", "show", node.ifname, "allowed-ips").stdout.splitlines()
    return {r for r in routes if "fe80::" not in r}, set(peers)


def log_of(lab: Lab, node: Node) -> str:
    return (lab.workdir / "logs" / f"{node.name}.log").read_text(errors="replace")


@pytest.fixture
async def lab(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Lab]:
    # The hub advertises a subnet that is spoke-1's own connected network, and half of
    # the address space, which holds the hub's endpoint and the API server.
    hub_args = ("--allowed-ips", f"100.96.0.0/24,{SPOKE_LAN},128.0.0.0/1")
    lab = Lab(tmp_path / "lab", backend=request.param, hub_args=hub_args)
    try:
        yield lab
    finally:
        await lab.close_kernels()
        lab.clean()


async def start(lab: Lab, *spokes: Node) -> Node:
    await skip_unless(lab.backend)
    lab.make_bridge()
    lab.start_api(in_process=True)
    hub = Node("hub", "hub", 1)
    lab.add_node(hub)
    lab.start_process(hub)
    for spoke in spokes:
        lab.add_node(spoke)
    return hub


async def pinging(spokes: list[Node]) -> list[PingStream]:
    return [await PingStream.start(NetNS(s.ns), HUB_WG, interval=0.01) for s in spokes]


async def no_loss(streams: list[PingStream]) -> None:
    try:
        for stream in streams:  # replies to what was sent during the change, too
            await stream.wait_for_replies(max(len(stream.replies) + 50, 200))
    finally:
        for stream in streams:
            await stream.stop()
    for stream in streams:
        assert len(stream.replies) >= 200
        assert not stream.missing, f"lost {sorted(stream.missing)}"


@pytest.mark.parametrize("lab", BACKENDS, indirect=True)
async def test_routes_of_other_owners_stay_untouched_on_spoke_and_hub_and_the_tunnel_stays_up(
    lab: Lab,
) -> None:
    spoke = Node("spoke-1", "spoke", 11)
    hub = await start(lab, spoke)
    ns = NetNS(spoke.ns)
    ns.ip("link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    ns.ip("link", "set", "lan0p", "up")
    ns.ip("link", "set", "lan0", "up")
    ns.ip("address", "add", "198.18.7.1/24", "dev", "lan0")
    spoke_before, hub_before = await settled(spoke), await settled(hub)
    assert f"{SPOKE_LAN} dev lan0 proto kernel scope link src 198.18.7.1" in spoke_before

    lab.start_process(spoke)
    await lab.wait_handshake(spoke, hub, within=60 * SLOW)
    streams = await pinging([spoke])
    # A Node claims exactly the hub's connected subnet.
    claim(lab, "claims-hub-subnet", "198.18.0.0/24")
    event = await conflict_event(lab, "claims-hub-subnet")
    assert (
        "allowed-ips 198.18.0.0/24 covers the directly connected network 198.18.0.0/24"
        in (event["message"])
    )

    async def spoke_refused() -> bool:
        text = log_of(lab, spoke)
        return f"route {SPOKE_LAN}" in text and "proto kernel dev lan0" in text

    await until("the spoke reports the hub's prefix as somebody else's route", spoke_refused, 30)
    text = log_of(lab, spoke)
    assert "no route for 128.0.0.0/1: it covers the hub's endpoint 198.18.0.1" in text
    assert text.count("no route for 128.0.0.0/1") == 1, "said once, not on every poll"
    assert routes_of_others(spoke) == spoke_before
    assert routes_of_others(hub) == hub_before
    observed = await lab.observe(spoke)
    assert {str(n) for n in observed.routes} == {"100.96.0.0/24"}
    await no_loss(streams)

    # The hub stops advertising the subnet (its process is stopped: it would put its
    # annotation back) and the spoke follows: withdrawing deletes nothing of anyone else's.
    # Spokes follow the announcement ConfigMap (what the hub's identity wrote).
    lab.stop_process(hub)
    assert lab.api is not None
    config_map = lab.api.get("configmaps", announcement.NAME, namespace=announcement.NAMESPACE)
    assert config_map is not None
    narrowed = [
        record.model_copy(update={"allowed_ips": (ipaddress.ip_network("100.96.0.0/24"),)})
        for record in announcement.decode(config_map["data"])
    ]
    lab.api.patch(
        "configmaps",
        announcement.NAME,
        {"data": announcement.encode(narrowed)},
        namespace=announcement.NAMESPACE,
    )

    async def followed() -> bool:
        peers = list((await lab.observe(spoke)).peers.values())
        return [sorted(map(str, p.allowed_ips)) for p in peers] == [["100.96.0.0/24"]]

    await until("the spoke follows the withdrawn prefix", followed, within=30)
    lab.api.delete_node("claims-hub-subnet")
    await asyncio.sleep(0.5)
    assert routes_of_others(spoke) == spoke_before
    assert routes_of_others(hub) == hub_before
    result = await lab.ping(spoke, HUB_WG, count=3)
    assert result.received == 3, result.output
    lab.check_alive()


@pytest.mark.parametrize("lab", BACKENDS, indirect=True)
async def test_claims_on_the_api_server_an_endpoint_or_the_hub_network_change_nothing(
    lab: Lab,
) -> None:
    spokes = [Node(f"spoke-{i}", "spoke", 10 + i) for i in (1, 2)]
    hub = await start(lab, *spokes)
    for spoke in spokes:
        lab.start_process(spoke)
    for spoke in spokes:
        await lab.wait_handshake(spoke, hub, within=60 * SLOW)
    before = hub_kernel(hub)
    streams = await pinging(spokes)

    claims = {
        "claims-api": ("198.18.0.254/32", "covers the API server address 198.18.0.254"),
        "claims-endpoint": (
            "100.96.0.77/32,198.18.0.12/32",
            "covers the endpoint 198.18.0.12 of node 'spoke-2'",
        ),
        "claims-network": ("198.18.0.0/16", "covers the directly connected network 198.18.0.0/24"),
    }
    for name, (allowed, _) in claims.items():
        claim(lab, name, allowed)
    for name, (_, words) in claims.items():
        event = await conflict_event(lab, name)
        assert words in event["message"], event["message"]
    await no_loss(streams)
    assert hub_kernel(hub) == before, "the hub's kernel changed"
    log = log_of(lab, hub)
    for name in claims:
        assert f"peer {name} skipped (PeerConflict)" in log
    lab.check_alive()

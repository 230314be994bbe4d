"""The whole system on real WireGuard: `wg-kube hub` and `wg-kube spoke` processes in
network namespaces, one API emulator, nothing configured by hand but Nodes and settings.

Runs with kernel WireGuard inside the test VM (marker `kernel`) and with wireguard-go
on the host (marker `userspace`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from wgkube.kernel import kernel_wireguard_unavailable
from wgkube.testing.lab import HUB_WG, SLOW, Lab, Node
from wgkube.testing.netns import NetNS, PingStream, can_make_namespaces

PREFIX = "wireguard.kube/"


async def skip_unless(backend: str) -> None:
    reason = can_make_namespaces()
    if reason is None and backend == "userspace" and shutil.which("wireguard-go") is None:
        reason = "wireguard-go is not installed"
    if reason is None and backend == "kernel":
        reason = await kernel_wireguard_unavailable()
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def ifindex(node: Node) -> int:
    out = NetNS(node.ns).ip("-j", "link", "show", node.ifname).stdout
    index: int = json.loads(out)[0]["ifindex"]
    return index


@pytest.fixture
async def lab(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Lab]:
    lab = Lab(tmp_path / "lab", backend=request.param, hub_args=("--allowed-ips", "100.96.0.0/24"))
    try:
        yield lab
    finally:
        await lab.close_kernels()
        lab.clean()


async def until(what: str, probe: Callable[[], Awaitable[bool]], within: float) -> None:
    """Poll `probe` until true; fail naming `what` after `within` seconds (scaled in the VM)."""
    deadline = time.monotonic() + within * SLOW
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {within * SLOW:.0f}s: {what}")


@pytest.mark.parametrize(
    "lab",
    [
        pytest.param("kernel", marks=pytest.mark.kernel, id="kernel"),
        pytest.param("userspace", marks=pytest.mark.userspace, id="userspace"),
    ],
    indirect=True,
)
async def test_spokes_reach_the_hub_a_peer_joins_and_leaves_without_loss_and_the_hub_moves(
    lab: Lab,
) -> None:
    await skip_unless(lab.backend)
    lab.make_bridge()
    lab.start_api(in_process=True)
    assert lab.api is not None
    hub = Node("hub", "hub", 1)
    lab.add_node(hub)
    lab.start_process(hub)
    spokes = [Node(f"spoke-{i}", "spoke", 10 + i) for i in (1, 2)]
    for spoke in spokes:
        lab.add_node(spoke)
        lab.start_process(spoke)
    for spoke in spokes:
        await lab.wait_handshake(spoke, hub, within=60 * SLOW)
    assert await lab.backend_name(hub) == lab.backend

    # Each spoke reaches the hub, and the other spoke through the hub.
    for spoke in spokes:
        result = await lab.ping(spoke, HUB_WG, count=3)
        assert result.received == result.transmitted == 3, result.output
    result = await lab.ping(spokes[0], spokes[1].wg_address, count=3)
    assert result.received == 3, result.output

    # A third peer joins and leaves through its Node while the two ping every 10 ms.
    hub_index = ifindex(hub)
    streams = [await PingStream.start(NetNS(s.ns), HUB_WG, interval=0.01) for s in spokes]
    try:
        third = Node("spoke-3", "spoke", 13)
        lab.add_node(third)
        lab.start_process(third)
        await lab.wait_handshake(third, hub, within=60 * SLOW)
        lab.stop_process(third)  # else its agent re-asserts the label at once
        lab.api.patch_node(third.name, {"metadata": {"labels": {PREFIX + "peer": None}}})
        key = lab.public_key(third)

        async def third_gone() -> bool:
            return key not in {p.public_key.b64 for p in (await lab.observe(hub)).peers.values()}

        await until("the unlabelled peer leaves the hub", third_gone, within=30)
        for stream in streams:  # replies to what was sent during the change, too
            await stream.wait_for_replies(len(stream.replies) + 50)
    finally:
        for stream in streams:
            await stream.stop()
    for stream in streams:
        assert len(stream.replies) > 100
        assert not stream.missing, f"lost {sorted(stream.missing)}"
    assert ifindex(hub) == hub_index, "the hub's interface was recreated"

    # The hub's ExternalIP moves: the hub republishes, spokes follow in place.
    NetNS(hub.ns).ip("address", "add", "198.18.0.2/24", "dev", "eth0")
    spoke_index = {s.name: ifindex(s) for s in spokes}
    new_address = [{"type": "ExternalIP", "address": "198.18.0.2"}]
    lab.api.patch_node(hub.name, {"status": {"addresses": new_address}}, status=True)
    for spoke in spokes:

        async def follows(spoke: Node = spoke) -> bool:
            peers = (await lab.observe(spoke)).peers.values()
            return [str(p.endpoint) for p in peers] == ["198.18.0.2:51820"]

        await until(f"{spoke.name} follows the hub's new endpoint", follows, within=30)
        assert ifindex(spoke) == spoke_index[spoke.name], f"{spoke.name} recreated its interface"
        result = await lab.ping(spoke, HUB_WG, count=3)
        assert result.received == 3, result.output
    lab.check_alive()

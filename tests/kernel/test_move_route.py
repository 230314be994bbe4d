"""The failover's one write: moving our route from one hub's device to another's in one
replace; anyone else's route to the destination stays. The same contract for every adapter."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from tests.kernel.conftest import Harness, make_adapter, unique_ifname
from tests.kernel.test_contract import A, B, converge, peer, state
from tests.kernel.test_foreign_routes import OTHER_DEVICE, STATIC4, foreign, underlay
from wgkube.desired.model import DesiredState
from wgkube.domain.errors import RouteConflict
from wgkube.kernel.port import Kernel

net = ipaddress.ip_network
RANGE = "100.64.0.0/24"


async def two_devices(h: Harness) -> tuple[Kernel, str]:
    """The harness device holding our route to RANGE, and a second device without it."""
    kernel = h.adapter()
    underlay(h, kernel)
    await converge(kernel, state(h, peer(A, RANGE), routes=(RANGE,)))
    second = unique_ifname("wgm")
    first = state(h, peer(B, RANGE))
    spec = dataclasses.replace(first.device, name=second, listen_port=51821, addresses=())
    await converge(kernel, DesiredState(device=spec, peers=first.peers))
    return kernel, second


def others(h: Harness, kernel: Kernel, second: str) -> set[str]:
    """Every route neither device owns."""
    return {line for line in foreign(h, kernel) if second not in line}


async def drop(h: Harness, ifname: str) -> None:
    cleaner = make_adapter(h.backend, h.ns, h.state)
    await cleaner.delete(ifname)
    await cleaner.close()


async def test_a_route_moves_between_our_devices_in_one_write_and_moving_again_writes_nothing(
    harness: Harness,
) -> None:
    kernel, second = await two_devices(harness)
    try:
        before = others(harness, kernel, second)
        writes = kernel.writes
        among = [harness.ifname, second]
        await kernel.move_route(second, net(RANGE), among=among)
        assert (await kernel.observe(second)).routes == {net(RANGE)}
        assert (await kernel.observe(harness.ifname)).routes == set()
        assert kernel.writes == writes + 1
        await kernel.move_route(second, net(RANGE), among=among)
        assert (await kernel.observe(second)).routes == {net(RANGE)}
        await kernel.move_route(harness.ifname, net(RANGE), among=among)
        assert (await kernel.observe(harness.ifname)).routes == {net(RANGE)}
        assert (await kernel.observe(second)).routes == set()
        assert others(harness, kernel, second) == before
    finally:
        await drop(harness, second)


@pytest.mark.parametrize("route", [STATIC4, OTHER_DEVICE], ids=["static", "proto-87-on-eth0"])
async def test_a_route_held_by_anyone_else_is_never_moved(harness: Harness, route: str) -> None:
    kernel, second = await two_devices(harness)
    try:
        before = foreign(harness, kernel)
        with pytest.raises(RouteConflict) as caught:
            await kernel.move_route(second, net(route), among=[harness.ifname, second])
        assert route in str(caught.value)
        assert foreign(harness, kernel) == before
        assert (await kernel.observe(second)).routes == set()
    finally:
        await drop(harness, second)

"""One reconcile step: read the kernel, diff, log the diff, apply; nothing when it is empty."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.builders import ep, iface, nets, priv
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.diff.model import ABSENT, AddAddress, ObservedState, Operation, RemoveAddress
from wgkube.diff.plan import describe, plan
from wgkube.domain.errors import KernelError
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint
from wgkube.kernel.memory import MemoryKernel
from wgkube.reconcile import Reconciler

P1, P2 = PublicKey(b"\x01" * 32), PublicKey(b"\x02" * 32)
E1, E2, LEARNED = ep("203.0.113.1:51820"), ep("203.0.113.2:51820"), ep("198.51.100.9:40000")
DEVICE = DeviceSpec(
    name="wg0", private_key=priv("hub"), listen_port=51820, addresses=(iface("100.96.0.1/24"),)
)
DESIRED = DesiredState(
    device=DEVICE,
    peers={
        P1: PeerSpec(P1, E1, nets("10.0.1.0/24"), persistent_keepalive=25),
        P2: PeerSpec(P2, None, nets("10.0.2.0/24")),
    },
    routes=frozenset(nets("10.0.1.0/24", "10.0.2.0/24")),
)


def with_endpoint(desired: DesiredState, key: PublicKey, endpoint: Endpoint) -> DesiredState:
    assert desired.peers is not None
    peers = dict(desired.peers)
    peers[key] = replace(peers[key], endpoint=endpoint)
    return replace(desired, peers=peers)


class FailingKernel(MemoryKernel):
    """A memory kernel whose writes fail, as a refusing kernel's would."""

    async def apply(self, ifname: str, ops: Sequence[Operation]) -> None:
        raise KernelError("refused")


async def test_a_reconcile_applies_the_plan_and_returns_its_operations() -> None:
    kernel = MemoryKernel()
    ops = await Reconciler(kernel).reconcile(DESIRED)
    assert ops == plan(DESIRED, ABSENT)
    assert kernel.writes == len(ops)
    assert plan(DESIRED, await kernel.observe("wg0")) == ()


class ReadRecordingKernel(MemoryKernel):
    def __init__(self) -> None:
        super().__init__()
        self.device_only: list[bool] = []

    async def observe(self, ifname: str, *, device_only: bool = False) -> ObservedState:
        self.device_only.append(device_only)
        return await super().observe(ifname, device_only=device_only)


async def test_peers_left_untouched_read_the_device_alone_and_keep_the_peers() -> None:
    kernel = ReadRecordingKernel()
    reconciler = Reconciler(kernel)
    await reconciler.reconcile(DESIRED)
    moved = replace(DEVICE, addresses=(iface("100.96.0.2/24"),))
    ops = await Reconciler(kernel).reconcile(DesiredState(device=moved, peers=None))
    assert kernel.device_only == [False, True]
    assert ops == (AddAddress(iface("100.96.0.2/24")), RemoveAddress(iface("100.96.0.1/24")))
    after = await kernel.observe("wg0")
    assert set(after.peers) == {P1, P2}
    assert after.routes == DESIRED.routes


async def test_a_second_reconcile_writes_nothing() -> None:
    kernel = MemoryKernel()
    reconciler = Reconciler(kernel)
    await reconciler.reconcile(DESIRED)
    writes = kernel.writes
    assert await reconciler.reconcile(DESIRED) == ()
    assert kernel.writes == writes


async def test_the_diff_is_logged_before_it_is_applied_and_nothing_when_empty(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reconciler = Reconciler(MemoryKernel())
    with caplog.at_level(logging.INFO, logger="wgkube.reconcile"):
        ops = await reconciler.reconcile(DESIRED)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"wg0: applying {len(ops)} change(s)"
    assert messages[1:] == [f"wg0:   {line}" for line in describe(ops)]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wgkube.reconcile"):
        await reconciler.reconcile(DESIRED)
    assert caplog.records == []


async def test_the_reconciler_remembers_the_published_endpoints_it_applied() -> None:
    reconciler = Reconciler(MemoryKernel())
    await reconciler.reconcile(DESIRED)
    assert reconciler.applied_endpoints == {P1: E1, P2: None}


async def test_a_resync_does_not_overwrite_an_endpoint_the_peer_roamed_to() -> None:
    kernel = MemoryKernel()
    reconciler = Reconciler(kernel)
    await reconciler.reconcile(DESIRED)
    kernel.learn_endpoint("wg0", P1, LEARNED)
    writes = kernel.writes
    assert await reconciler.reconcile(DESIRED) == ()
    assert kernel.writes == writes
    assert (await kernel.observe("wg0")).peers[P1].endpoint == LEARNED


async def test_a_newly_published_endpoint_replaces_the_roamed_one() -> None:
    kernel = MemoryKernel()
    reconciler = Reconciler(kernel)
    await reconciler.reconcile(DESIRED)
    kernel.learn_endpoint("wg0", P1, LEARNED)
    await reconciler.reconcile(with_endpoint(DESIRED, P1, E2))
    assert (await kernel.observe("wg0")).peers[P1].endpoint == E2
    assert reconciler.applied_endpoints[P1] == E2


async def test_an_unpublished_endpoint_never_overwrites_the_learned_one() -> None:
    kernel = MemoryKernel()
    reconciler = Reconciler(kernel)
    await reconciler.reconcile(DESIRED)
    kernel.learn_endpoint("wg0", P2, LEARNED)
    assert await Reconciler(kernel).reconcile(DESIRED) == ()  # even with no memory
    assert (await kernel.observe("wg0")).peers[P2].endpoint == LEARNED


async def test_a_restart_with_the_same_desired_state_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "kernel.json"
    await Reconciler(MemoryKernel(path)).reconcile(DESIRED)
    total = json.loads(path.read_text())["writes"]
    assert total > 0

    kernel = MemoryKernel(path)
    assert await Reconciler(kernel).reconcile(DESIRED) == ()
    assert kernel.writes == 0
    assert json.loads(path.read_text())["writes"] == total


async def test_peers_none_manages_the_device_and_keeps_the_endpoint_memory() -> None:
    kernel = MemoryKernel()
    reconciler = Reconciler(kernel)
    await reconciler.reconcile(DESIRED)
    moved = replace(DESIRED, peers=None, device=replace(DEVICE, listen_port=51821))
    assert len(await reconciler.reconcile(moved)) == 1
    observed = await kernel.observe("wg0")
    assert observed.listen_port == 51821
    assert set(observed.peers) == {P1, P2}
    assert reconciler.applied_endpoints == {P1: E1, P2: None}


async def test_a_failed_apply_leaves_the_endpoint_memory_as_it_was() -> None:
    reconciler = Reconciler(FailingKernel())
    with pytest.raises(KernelError, match="refused"):
        await reconciler.reconcile(DESIRED)
    assert reconciler.applied_endpoints == {}

"""Failure isolation: one peer's value the kernel refuses blocks nobody else."""

from __future__ import annotations

import errno
import logging

import pytest

from tests.support.faults import Fault, FaultyKernel
from tests.unit.builders import ep, iface, net, nets, priv, pub
from wgkube.desired.model import CONFLICT, DesiredState, DeviceSpec, PeerSpec
from wgkube.diff.plan import plan
from wgkube.domain.errors import KernelError, OperationRejected
from wgkube.domain.keys import PublicKey
from wgkube.kernel.memory import MemoryKernel
from wgkube.reconcile import KERNEL_REJECTED, Reconciler

DEVICE = DeviceSpec(
    name="wg0", private_key=priv("hub"), listen_port=51820, addresses=(iface("100.96.0.1/24"),)
)
BAD_NETS = net("10.66.0.0/16")
"""Where the injected faults live: a peer with an allowed IP in here is refused."""


def spec(n: int, *allowed: str, endpoint: str | None = None) -> PeerSpec:
    return PeerSpec(pub(n), None if endpoint is None else ep(endpoint), nets(*allowed))


def state(*peers: PeerSpec) -> DesiredState:
    return DesiredState(
        device=DEVICE,
        peers={p.public_key: p for p in peers},
        routes=frozenset(n for p in peers for n in p.allowed_ips),
    )


GOOD = [spec(i, f"10.0.{i}.0/24", endpoint=f"203.0.113.{i}:51820") for i in range(1, 6)]
BAD = spec(9, "10.66.1.0/24", endpoint="203.0.113.9:51820")


def kernel(*faults: Fault) -> FaultyKernel:
    return FaultyKernel(MemoryKernel(), faults or (Fault("peer", BAD_NETS),))


async def peer_keys(k: FaultyKernel) -> set[PublicKey]:
    return set((await k.observe("wg0")).peers)


async def test_a_refused_peer_is_left_out_and_every_other_peer_and_route_is_applied() -> None:
    k = kernel()
    reconciler = Reconciler(k)
    await reconciler.reconcile(state(*GOOD[:2], BAD, *GOOD[2:]))
    observed = await k.observe("wg0")
    assert set(observed.peers) == {p.public_key for p in GOOD}
    assert observed.routes == frozenset(n for p in GOOD for n in p.allowed_ips)
    assert plan(state(*GOOD), observed) == ()


async def test_the_refusal_names_the_value_and_the_kernels_answer() -> None:
    reconciler = Reconciler(kernel())
    await reconciler.reconcile(state(*GOOD, BAD))
    refusal = reconciler.refused[BAD.public_key]
    assert refusal.reason == KERNEL_REJECTED
    assert refusal.spec == BAD
    assert "10.66.1.0/24" in refusal.message
    assert "Invalid argument (errno 22, injected)" in refusal.message


async def test_a_quarantined_peer_is_not_retried_until_its_data_changes() -> None:
    k = kernel()
    reconciler = Reconciler(k)
    await reconciler.reconcile(state(*GOOD, BAD))
    refusals, writes = k.refusals, k.writes
    assert await reconciler.reconcile(state(*GOOD, BAD)) == ()
    assert (k.refusals, k.writes) == (refusals, writes)

    fixed = spec(9, "10.9.0.0/24", endpoint="203.0.113.9:51820")
    await reconciler.reconcile(state(*GOOD, fixed))
    assert BAD.public_key in await peer_keys(k)
    assert reconciler.refused == {}
    assert net("10.9.0.0/24") in (await k.observe("wg0")).routes


async def test_several_refused_peers_among_many_are_all_found_and_the_rest_applied() -> None:
    many = [spec(i, f"10.1.{i}.0/24") for i in range(40)]
    bad = [spec(100 + i, f"10.66.{i}.0/24") for i in range(3)]
    k = kernel()
    reconciler = Reconciler(k)
    await reconciler.reconcile(state(*many[:7], bad[0], *many[7:30], bad[1], *many[30:], bad[2]))
    assert await peer_keys(k) == {p.public_key for p in many}
    assert set(reconciler.refused) == {p.public_key for p in bad}


async def test_a_route_that_belongs_to_someone_else_quarantines_its_peer_as_a_conflict() -> None:
    k = kernel(Fault("route", net("10.0.3.0/24"), error="conflict"))
    reconciler = Reconciler(k)
    await reconciler.reconcile(state(*GOOD))
    refusal = reconciler.refused[GOOD[2].public_key]
    assert refusal.reason == CONFLICT
    assert "add route 10.0.3.0/24" in refusal.message
    observed = await k.observe("wg0")
    # The hub removes what the refused peer left half-applied (its upsert landed first).
    assert GOOD[2].public_key not in observed.peers
    assert set(observed.peers) == {p.public_key for p in GOOD} - {GOOD[2].public_key}
    assert net("10.0.3.0/24") not in observed.routes


async def test_a_peer_changed_to_a_refused_value_is_removed_on_the_hub() -> None:
    k = kernel()
    reconciler = Reconciler(k)
    await reconciler.reconcile(state(*GOOD))
    changed = spec(3, "10.0.3.0/24", "10.66.3.0/24", endpoint="203.0.113.3:51820")
    await reconciler.reconcile(state(*GOOD[:2], changed, *GOOD[3:]))
    observed = await k.observe("wg0")
    assert pub(3) not in observed.peers
    assert net("10.0.3.0/24") not in observed.routes
    assert len(observed.peers) == 4


async def test_with_keep_refused_a_peer_keeps_its_last_good_state() -> None:
    # The spoke's case: the hub's announcement changes to a value the kernel refuses.
    k = kernel()
    reconciler = Reconciler(k, keep_refused=True)
    hub = spec(1, "100.96.0.0/24", endpoint="203.0.113.1:51820")
    await reconciler.reconcile(state(hub))
    good = await k.observe("wg0")
    bad = spec(1, "100.96.0.0/24", "10.66.0.0/24", endpoint="203.0.113.7:51820")
    await reconciler.reconcile(state(bad))
    assert reconciler.refused[hub.public_key].spec == bad
    after = await k.observe("wg0")
    assert after.peers == good.peers
    assert after.routes == good.routes
    writes = k.writes
    assert await reconciler.reconcile(state(bad)) == ()
    assert k.writes == writes


async def test_a_refusal_that_belongs_to_no_peer_fails_the_reconcile_after_the_peers_land() -> None:
    k = kernel(Fault("address", net("100.96.0.0/24"), code=errno.EADDRNOTAVAIL))
    with pytest.raises(OperationRejected, match="Cannot assign requested address"):
        await Reconciler(k).reconcile(state(*GOOD))
    assert await peer_keys(k) == {p.public_key for p in GOOD}


async def test_a_device_failure_is_raised_and_logged_and_the_next_reconcile_finishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = MemoryKernel()
    k = FaultyKernel(inner, [Fault("peer", net("10.0.3.0/24"), error="device")])
    reconciler = Reconciler(k)
    with (
        caplog.at_level(logging.WARNING, logger="wgkube.reconcile"),
        pytest.raises(KernelError, match="device failed"),
    ):
        await reconciler.reconcile(state(*GOOD))
    assert any("left half-applied" in r.getMessage() for r in caplog.records)
    assert reconciler.refused == {}
    k.faults.clear()  # the device is back
    await reconciler.reconcile(state(*GOOD))
    assert plan(state(*GOOD), await k.observe("wg0")) == ()


async def test_a_retry_takes_a_peer_in_once_the_cause_of_its_refusal_is_gone() -> None:
    k = kernel(Fault("route", net("10.0.3.0/24"), error="conflict"))
    reconciler = Reconciler(k)
    await reconciler.reconcile(state(*GOOD))
    assert GOOD[2].public_key in reconciler.refused
    k.faults.clear()  # the foreign route was deleted
    assert await reconciler.reconcile(state(*GOOD)) == ()  # no retry without being asked
    reconciler.retry_refused()
    await reconciler.reconcile(state(*GOOD))
    assert reconciler.refused == {}
    assert plan(state(*GOOD), await k.observe("wg0")) == ()


async def test_a_retry_refused_again_keeps_the_same_refusal() -> None:
    k = kernel()
    reconciler = Reconciler(k)
    await reconciler.reconcile(state(*GOOD, BAD))
    first = reconciler.refused[BAD.public_key]
    reconciler.retry_refused()
    await reconciler.reconcile(state(*GOOD, BAD))
    assert reconciler.refused == {BAD.public_key: first}
    assert await peer_keys(k) == {p.public_key for p in GOOD}


async def test_a_retry_cut_short_by_a_device_failure_keeps_the_quarantine() -> None:
    k = kernel()
    reconciler = Reconciler(k)
    await reconciler.reconcile(state(*GOOD, BAD))
    k.faults.insert(0, Fault("peer", net("10.66.0.0/16"), error="device"))
    reconciler.retry_refused()
    with pytest.raises(KernelError):
        await reconciler.reconcile(state(*GOOD, BAD))
    assert set(reconciler.refused) == {BAD.public_key}


async def test_on_a_spoke_a_route_someone_else_holds_is_left_out_and_the_tunnel_stays() -> None:
    memory = MemoryKernel()
    hub = spec(1, "100.96.0.0/24", "198.51.100.0/24", endpoint="203.0.113.1:51820")
    await memory.apply("wg0", plan(DesiredState(device=DEVICE), await memory.observe("wg0")))
    memory.add_foreign_route(net("198.51.100.0/24"), "proto kernel dev eth0")
    reconciler = Reconciler(memory, keep_refused=True)
    await reconciler.reconcile(state(hub))
    observed = await memory.observe("wg0")
    assert set(observed.peers) == {hub.public_key}
    assert observed.peers[hub.public_key].allowed_ips == frozenset(hub.allowed_ips)
    assert observed.routes == frozenset({net("100.96.0.0/24")})
    assert memory.foreign_routes() == {"198.51.100.0/24": "proto kernel dev eth0"}
    assert reconciler.refused == {}
    assert "proto kernel dev eth0" in reconciler.skipped_routes[net("198.51.100.0/24")]
    assert await reconciler.reconcile(state(hub)) == ()
    # Once the hub stops advertising the prefix, nothing is held back any more.
    narrower = spec(1, "100.96.0.0/24", endpoint="203.0.113.1:51820")
    await reconciler.reconcile(state(narrower))
    assert reconciler.skipped_routes == {}

"""What the real data plane refuses: a refused value is OperationRejected (the device is
fine and the reconciler isolates it); a missing device stays DeviceNotFound."""

from __future__ import annotations

import ipaddress

import pytest

from tests.kernel.conftest import Harness
from tests.kernel.test_contract import A, B, C, converge, device, peer, state
from wgkube.desired.model import DesiredState, PeerSpec
from wgkube.diff.model import SetMtu, UpsertPeer
from wgkube.domain.errors import OperationRejected
from wgkube.domain.keys import PrivateKey
from wgkube.domain.net import Endpoint
from wgkube.reconcile import KERNEL_REJECTED, Reconciler

ZONED = ipaddress.ip_network("fe80::1%eth0/128")
"""Python keeps the zone; wireguard-go refuses it (errno=-22)."""


# Refused by every link: read as a negative int by the kernel. (Kernel WireGuard takes an
# MTU of 10 or 1000000, which a TUN device refuses: no small or big one fits all.)
@pytest.mark.parametrize("mtu", [2**31, 2**32 - 1])
async def test_an_mtu_the_link_refuses_is_an_operation_rejected_and_the_device_stays(
    harness: Harness, mtu: int
) -> None:
    kernel = harness.adapter()
    await converge(kernel, state(harness, peer(A, "10.0.1.0/24"), routes=("10.0.1.0/24",)))
    before = await kernel.observe(harness.ifname)
    with pytest.raises(OperationRejected) as info:
        await kernel.apply(harness.ifname, [SetMtu(mtu)])
    assert "errno 22" in info.value.answer
    assert await kernel.observe(harness.ifname) == before


@pytest.mark.parametrize(
    "harness", [pytest.param("userspace", marks=pytest.mark.userspace)], indirect=True
)
@pytest.mark.parametrize(
    "op",
    [
        UpsertPeer(A, allowed_ips=(ZONED,), new=True),
        UpsertPeer(A, endpoint=Endpoint(ZONED.network_address, 51820), new=True),
    ],
    ids=["allowed-ip", "endpoint"],
)
async def test_wireguard_go_refuses_a_zone_index_as_an_operation_rejected(
    harness: Harness, op: UpsertPeer
) -> None:
    kernel = harness.adapter()
    await converge(kernel, DesiredState(device=device(harness)))
    with pytest.raises(OperationRejected) as info:
        await kernel.apply(harness.ifname, [op])
    assert info.value.answer == "errno=-22 (Invalid argument)"


@pytest.mark.parametrize(
    "harness", [pytest.param("userspace", marks=pytest.mark.userspace)], indirect=True
)
async def test_the_reconciler_applies_every_peer_but_the_one_wireguard_go_refuses(
    harness: Harness,
) -> None:
    kernel = harness.adapter()
    refused = PrivateKey.generate().public_key()
    good = [peer(k, f"10.0.{i}.0/24") for i, k in enumerate((A, B, C), start=1)]
    bad = PeerSpec(refused, None, (ipaddress.ip_network("10.0.9.0/24"), ZONED))
    desired = state(
        harness,
        good[0],
        bad,
        *good[1:],
        routes=("10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24", "10.0.9.0/24"),
    )
    reconciler = Reconciler(kernel)
    await reconciler.reconcile(desired)
    observed = await kernel.observe(harness.ifname)
    assert set(observed.peers) == {A, B, C}
    assert {str(n) for n in observed.routes} == {"10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"}
    refusal = reconciler.refused[refused]
    assert refusal.reason == KERNEL_REJECTED
    assert "fe80::1%eth0/128" in refusal.message
    assert "errno=-22" in refusal.message
    assert await reconciler.reconcile(desired) == ()


@pytest.mark.parametrize(
    "harness", [pytest.param("userspace", marks=pytest.mark.userspace)], indirect=True
)
async def test_with_keep_refused_a_half_applied_refusal_is_put_back_as_it_was(
    harness: Harness,
) -> None:
    # wireguard-go applies a `set` line by line: the refused request has already replaced
    # the allowed IPs when it reaches the zoned one. The reconciler puts the peer back.
    kernel = harness.adapter()
    reconciler = Reconciler(kernel, keep_refused=True)
    good = state(harness, peer(A, "10.0.2.0/24"), routes=("10.0.2.0/24",))
    await reconciler.reconcile(good)
    before = await kernel.observe(harness.ifname)
    bad = PeerSpec(A, None, (ipaddress.ip_network("10.0.1.0/24"), ZONED))
    await reconciler.reconcile(state(harness, bad, routes=("10.0.1.0/24",)))
    assert A in reconciler.refused
    after = await kernel.observe(harness.ifname)
    assert after.peers[A].allowed_ips == before.peers[A].allowed_ips
    assert after.routes == before.routes

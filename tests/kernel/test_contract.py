"""The Kernel port's contract, proven against every adapter with the same tests."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from tests.kernel.conftest import Harness
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.diff.model import (
    ABSENT,
    AddAddress,
    AddRoute,
    ConfigureDevice,
    Operation,
    RemoveAddress,
    RemovePeer,
    RemoveRoute,
    SetMtu,
    SetUp,
    UpsertPeer,
)
from wgkube.diff.plan import plan
from wgkube.domain.errors import DeviceNotFound
from wgkube.domain.keys import PresharedKey, PrivateKey, PublicKey
from wgkube.domain.net import Endpoint
from wgkube.kernel.netlink import NetlinkKernel
from wgkube.kernel.port import Kernel

net = ipaddress.ip_network
iface = ipaddress.ip_interface

DEVICE_KEY = PrivateKey.generate()
PSK = PresharedKey(bytes(range(32)))
A, B, C = (PrivateKey.generate().public_key() for _ in range(3))


def device(h: Harness, **overrides: Any) -> DeviceSpec:
    spec = DeviceSpec(
        name=h.ifname,
        private_key=DEVICE_KEY,
        listen_port=51820,
        fwmark=0x51,
        addresses=(iface("100.96.0.1/24"), iface("fd96::1/64")),
        mtu=1380,
    )
    return dataclasses.replace(spec, **overrides)


def peer(
    key: PublicKey,
    *nets: str,
    endpoint: Endpoint | None = None,
    persistent_keepalive: int = 0,
    preshared_key: PresharedKey | None = None,
) -> PeerSpec:
    return PeerSpec(
        public_key=key,
        endpoint=endpoint,
        allowed_ips=tuple(net(n) for n in nets),
        persistent_keepalive=persistent_keepalive,
        preshared_key=preshared_key,
    )


def state(h: Harness, *peers: PeerSpec, routes: tuple[str, ...] = ()) -> DesiredState:
    return DesiredState(
        device=device(h),
        peers={p.public_key: p for p in peers},
        routes=frozenset(net(r) for r in routes),
    )


async def converge(kernel: Kernel, desired: DesiredState) -> tuple[Operation, ...]:
    """Plan, apply, and prove that a second plan is empty (the idempotence check)."""
    ifname = desired.device.name
    ops = plan(desired, await kernel.observe(ifname))
    await kernel.apply(ifname, ops)
    again = plan(desired, await kernel.observe(ifname))
    assert again == (), f"not converged after {len(ops)} ops: {again}"
    return ops


# -- device ---------------------------------------------------------------------------------
async def test_a_missing_device_is_observed_as_absent(harness: Harness) -> None:
    assert await harness.adapter().observe(harness.ifname) == ABSENT


@pytest.mark.parametrize(
    "op",
    [
        SetMtu(1400),
        SetUp(),
        AddAddress(iface("10.0.0.1/24")),
        ConfigureDevice(listen_port=1234),
        UpsertPeer(A, allowed_ips=(net("10.0.0.0/24"),), new=True),
        RemovePeer(A),
        AddRoute(net("10.0.0.0/24")),
        RemoveRoute(net("10.0.0.0/24")),
    ],
    ids=lambda op: type(op).__name__,
)
async def test_operations_on_a_missing_device_raise_device_not_found(
    harness: Harness, op: Operation
) -> None:
    kernel = harness.adapter()
    with pytest.raises(DeviceNotFound):
        await kernel.apply(harness.ifname, [op])
    assert kernel.writes == 0


async def test_a_device_is_created_with_address_mtu_key_port_and_fwmark(harness: Harness) -> None:
    kernel = harness.adapter()
    ops = await converge(kernel, DesiredState(device=device(harness)))
    assert kernel.writes == len(ops)
    seen = await kernel.observe(harness.ifname)
    assert seen.exists
    assert seen.up
    assert seen.mtu == 1380
    assert seen.addresses == {iface("100.96.0.1/24"), iface("fd96::1/64")}
    assert seen.private_key == DEVICE_KEY.clamped()
    assert seen.listen_port == 51820
    assert seen.fwmark == 0x51
    assert seen.peers == {}
    assert seen.routes == frozenset()


async def test_an_unclamped_private_key_is_read_back_clamped(harness: Harness) -> None:
    raw = bytearray(DEVICE_KEY.raw)
    raw[0] |= 7
    raw[31] |= 128
    unclamped = PrivateKey(bytes(raw))
    kernel = harness.adapter()
    await converge(kernel, DesiredState(device=device(harness, private_key=unclamped)))
    assert (await kernel.observe(harness.ifname)).private_key == DEVICE_KEY.clamped()


async def test_addresses_and_mtu_change_in_place(harness: Harness) -> None:
    kernel = harness.adapter()
    await converge(kernel, DesiredState(device=device(harness)))
    ops = await converge(
        kernel, DesiredState(device=device(harness, mtu=1300, addresses=(iface("100.96.0.9/24"),)))
    )
    assert ops == (
        SetMtu(1300),
        AddAddress(iface("100.96.0.9/24")),
        RemoveAddress(iface("100.96.0.1/24")),
        RemoveAddress(iface("fd96::1/64")),
    )
    seen = await kernel.observe(harness.ifname)
    assert seen.mtu == 1300
    assert seen.addresses == {iface("100.96.0.9/24")}


async def test_delete_removes_the_device(harness: Harness) -> None:
    kernel = harness.adapter()
    await converge(kernel, state(harness, peer(A, "10.1.0.0/24"), routes=("10.1.0.0/24",)))
    writes = kernel.writes
    await kernel.delete(harness.ifname)
    assert await kernel.observe(harness.ifname) == ABSENT
    assert kernel.writes == writes + 1
    await kernel.delete(harness.ifname)  # already gone: nothing to do, nothing counted
    assert kernel.writes == writes + 1


# -- peers ------------------------------------------------------------------------------------
async def test_peers_are_added_with_and_without_endpoint(harness: Harness) -> None:
    kernel = harness.adapter()
    desired = state(
        harness,
        peer(
            A,
            "10.1.0.0/24",
            "fd01::/64",
            endpoint=Endpoint.parse("192.0.2.1:51821"),
            persistent_keepalive=25,
            preshared_key=PSK,
        ),
        peer(B, "10.2.0.0/24", endpoint=Endpoint.parse("[2001:db8::2]:51822")),
        peer(C, "10.3.0.0/24"),
    )
    await converge(kernel, desired)
    peers = (await kernel.observe(harness.ifname)).peers
    assert set(peers) == {A, B, C}
    assert peers[A].endpoint == Endpoint.parse("192.0.2.1:51821")
    assert peers[A].allowed_ips == {net("10.1.0.0/24"), net("fd01::/64")}
    assert peers[A].persistent_keepalive == 25
    assert peers[A].preshared_key == PSK
    assert peers[B].endpoint == Endpoint.parse("[2001:db8::2]:51822")
    assert peers[B].preshared_key is None
    assert peers[B].persistent_keepalive == 0
    assert peers[C].endpoint is None
    assert peers[C].allowed_ips == {net("10.3.0.0/24")}
    assert peers[C].last_handshake == 0.0


async def test_a_peer_is_updated_in_place(harness: Harness) -> None:
    kernel = harness.adapter()
    before = peer(A, "10.1.0.0/24", "fd01::/64", persistent_keepalive=25, preshared_key=PSK)
    await converge(kernel, state(harness, before))
    after = peer(A, "10.1.1.0/24", "10.1.2.0/24")  # keepalive dropped, psk dropped
    ops = await converge(kernel, state(harness, after))
    assert ops == (
        UpsertPeer(
            A,
            allowed_ips=(net("10.1.1.0/24"), net("10.1.2.0/24")),
            persistent_keepalive=0,
            preshared_key=PresharedKey.zero(),
        ),
    )
    seen = (await kernel.observe(harness.ifname)).peers[A]
    assert seen.allowed_ips == {net("10.1.1.0/24"), net("10.1.2.0/24")}
    assert seen.persistent_keepalive == 0
    assert seen.preshared_key is None


async def test_a_peer_can_lose_all_allowed_ips(harness: Harness) -> None:
    kernel = harness.adapter()
    await converge(kernel, state(harness, peer(A, "10.1.0.0/24")))
    await converge(kernel, state(harness, peer(A)))
    assert (await kernel.observe(harness.ifname)).peers[A].allowed_ips == frozenset()


async def test_a_peer_with_1200_allowed_ips_is_written_and_read_whole(harness: Harness) -> None:
    # More than one netlink message holds, both ways: written in appended chunks, and
    # dumped over several messages that must be merged.
    nets = [f"10.{i // 250}.{i % 250}.0/24" for i in range(1000)]
    nets += [f"fd00:{i:x}::/64" for i in range(200)]
    kernel = harness.adapter()
    await converge(kernel, state(harness, peer(A, *nets), peer(B, "192.168.0.0/24")))
    peers = (await kernel.observe(harness.ifname)).peers
    assert len(peers[A].allowed_ips) == 1200
    assert peers[B].allowed_ips == {net("192.168.0.0/24")}
    await converge(kernel, state(harness, peer(A, *nets[:3]), peer(B, "192.168.0.0/24")))
    assert len((await kernel.observe(harness.ifname)).peers[A].allowed_ips) == 3


async def test_a_prefix_moves_between_peers(harness: Harness) -> None:
    kernel = harness.adapter()
    await converge(kernel, state(harness, peer(A, "10.1.0.0/24", "10.9.0.0/24"), peer(B)))
    await converge(kernel, state(harness, peer(A, "10.1.0.0/24"), peer(B, "10.9.0.0/24")))
    peers = (await kernel.observe(harness.ifname)).peers
    assert peers[A].allowed_ips == {net("10.1.0.0/24")}
    assert peers[B].allowed_ips == {net("10.9.0.0/24")}


async def test_a_prefix_given_to_another_peer_leaves_the_first(harness: Harness) -> None:
    # WireGuard's allowed-IPs table is per device: adding a prefix to B takes it from A.
    kernel = harness.adapter()
    await converge(kernel, state(harness, peer(A, "10.1.0.0/24", "10.9.0.0/24"), peer(B)))
    await kernel.apply(harness.ifname, [UpsertPeer(B, allowed_ips=(net("10.9.0.0/24"),))])
    peers = (await kernel.observe(harness.ifname)).peers
    assert peers[A].allowed_ips == {net("10.1.0.0/24")}
    assert peers[B].allowed_ips == {net("10.9.0.0/24")}


async def test_a_peer_is_removed_and_removing_it_again_succeeds(harness: Harness) -> None:
    kernel = harness.adapter()
    await converge(kernel, state(harness, peer(A, "10.1.0.0/24"), peer(B, "10.2.0.0/24")))
    ops = await converge(kernel, state(harness, peer(B, "10.2.0.0/24")))
    assert ops == (RemovePeer(A),)
    assert set((await kernel.observe(harness.ifname)).peers) == {B}
    writes = kernel.writes
    await kernel.apply(harness.ifname, [RemovePeer(A)])
    assert kernel.writes == writes + 1
    assert set((await kernel.observe(harness.ifname)).peers) == {B}


# -- routes -----------------------------------------------------------------------------------
async def test_routes_are_added_observed_and_removed(harness: Harness) -> None:
    kernel = harness.adapter()
    with_routes = state(
        harness,
        peer(A, "10.1.0.0/24", "fd01::/64"),
        routes=("10.1.0.0/24", "fd01::/64"),
    )
    await converge(kernel, with_routes)
    assert (await kernel.observe(harness.ifname)).routes == {net("10.1.0.0/24"), net("fd01::/64")}
    ops = await converge(kernel, state(harness, peer(A, "10.1.0.0/24", "fd01::/64")))
    assert ops == (RemoveRoute(net("10.1.0.0/24")), RemoveRoute(net("fd01::/64")))
    assert (await kernel.observe(harness.ifname)).routes == frozenset()


async def test_adding_a_present_route_and_removing_absent_things_succeed(
    harness: Harness,
) -> None:
    kernel = harness.adapter()
    await converge(kernel, state(harness, peer(A, "10.1.0.0/24"), routes=("10.1.0.0/24",)))
    again: list[Operation] = [
        AddRoute(net("10.1.0.0/24")),
        AddAddress(iface("100.96.0.1/24")),
        RemoveRoute(net("10.77.0.0/24")),
        RemoveAddress(iface("100.96.7.7/24")),
        RemovePeer(C),
    ]
    writes = kernel.writes
    await kernel.apply(harness.ifname, again)
    assert kernel.writes == writes + len(again)
    seen = await kernel.observe(harness.ifname)
    assert seen.routes == {net("10.1.0.0/24")}
    assert seen.addresses == {iface("100.96.0.1/24"), iface("fd96::1/64")}


async def test_a_foreign_route_is_never_observed_nor_touched(harness: Harness) -> None:
    if harness.ns is None:
        pytest.skip("the in-memory kernel holds only wg-kube's routes")
    kernel = harness.adapter()
    desired = state(harness, peer(A, "10.1.0.0/24"), routes=("10.1.0.0/24",))
    await converge(kernel, desired)
    harness.ns.ip("route", "add", "10.50.0.0/24", "dev", harness.ifname, "proto", "static")
    harness.ns.ip("-6", "route", "add", "fd50::/64", "dev", harness.ifname, "proto", "static")
    assert (await kernel.observe(harness.ifname)).routes == {net("10.1.0.0/24")}
    # Dropping every route of ours leaves the foreign ones alone.
    await converge(kernel, state(harness, peer(A, "10.1.0.0/24")))
    # Removing a route we do not own, by the same prefix, does not remove theirs either.
    await kernel.apply(harness.ifname, [RemoveRoute(net("10.50.0.0/24"))])
    table = harness.ns.ip("route", "show", "dev", harness.ifname).stdout
    table6 = harness.ns.ip("-6", "route", "show", "dev", harness.ifname).stdout
    assert "10.50.0.0/24 proto static" in table
    assert "fd50::/64 proto static" in table6
    assert "10.1.0.0/24" not in table


# -- idempotence and restart -------------------------------------------------------------------
def full_state(h: Harness) -> DesiredState:
    return state(
        h,
        peer(
            A,
            "10.1.0.0/24",
            "fd01::/64",
            endpoint=Endpoint.parse("192.0.2.1:51821"),
            persistent_keepalive=25,
            preshared_key=PSK,
        ),
        peer(B, "10.2.0.0/24"),
        routes=("10.1.0.0/24", "10.2.0.0/24", "fd01::/64"),
    )


async def test_applying_the_plan_leaves_nothing_to_do(harness: Harness) -> None:
    kernel = harness.adapter()
    ops = await converge(kernel, full_state(harness))
    assert kernel.writes == len(ops)
    writes = kernel.writes
    await kernel.apply(
        harness.ifname, plan(full_state(harness), await kernel.observe(harness.ifname))
    )
    assert kernel.writes == writes


async def test_a_device_only_read_gives_the_device_as_a_full_read_and_no_peers_nor_routes(
    harness: Harness,
) -> None:
    kernel = harness.adapter()
    await converge(kernel, full_state(harness))
    full = await kernel.observe(harness.ifname)
    assert full.peers
    assert full.routes
    alone = await kernel.observe(harness.ifname, device_only=True)
    assert alone == dataclasses.replace(full, peers={}, routes=frozenset())
    # With peers left untouched, the device-only read plans nothing either.
    assert plan(DesiredState(device=device(harness), peers=None), alone) == ()


async def test_a_restarted_adapter_adopts_the_device_without_writing(harness: Harness) -> None:
    first = harness.adapter()
    await converge(first, full_state(harness))
    await first.close()
    second = harness.adapter()
    ops = plan(full_state(harness), await second.observe(harness.ifname))
    assert ops == ()
    await second.apply(harness.ifname, ops)
    assert second.writes == 0


# -- scale --------------------------------------------------------------------------------------
def many_peers(count: int) -> list[PeerSpec]:
    keys = sorted(PrivateKey.generate().public_key() for _ in range(count))
    return [
        peer(key, f"10.{100 + i // 250}.{i % 250}.0/24", f"fd00:{i:x}::/64")
        for i, key in enumerate(keys)
    ]


def routes_of(peers: list[PeerSpec]) -> tuple[str, ...]:
    return tuple(str(n) for p in peers for n in p.allowed_ips)


async def test_300_peers_with_routes_are_added_and_removed(harness: Harness) -> None:
    kernel = harness.adapter()
    await converge(kernel, DesiredState(device=device(harness), peers={}))
    peers = many_peers(300)
    ops = await converge(kernel, state(harness, *peers, routes=routes_of(peers)))
    assert len(ops) == 300 + 600
    seen = await kernel.observe(harness.ifname)
    assert len(seen.peers) == 300
    assert len(seen.routes) == 600
    if isinstance(kernel, NetlinkKernel):
        assert kernel.messages == 2  # device, then all 300 peers in one message
    ops = await converge(kernel, DesiredState(device=device(harness), peers={}))
    assert len(ops) == 300 + 600
    seen = await kernel.observe(harness.ifname)
    assert (len(seen.peers), len(seen.routes)) == (0, 0)

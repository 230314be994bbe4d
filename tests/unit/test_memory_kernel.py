"""The in-memory kernel: WireGuard's semantics, so the other tests can trust it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.builders import ep, iface, net, nets, priv, psk
from wgkube.diff.model import (
    ABSENT,
    AddAddress,
    AddRoute,
    ConfigureDevice,
    CreateLink,
    Operation,
    RemoveAddress,
    RemovePeer,
    RemoveRoute,
    SetMtu,
    SetUp,
    UpsertPeer,
)
from wgkube.domain.errors import DeviceNotFound
from wgkube.domain.keys import PresharedKey, PrivateKey, PublicKey
from wgkube.kernel.memory import DEFAULT_MTU, MemoryKernel

P1, P2, P3 = (PublicKey(bytes([i]) * 32) for i in (1, 2, 3))
E1, E2 = ep("203.0.113.1:51820"), ep("[2001:db8::2]:51820")


async def kernel_with_device(path: Path | None = None) -> MemoryKernel:
    kernel = MemoryKernel(path)
    await kernel.apply("wg0", [CreateLink("wg0")])
    return kernel


async def test_a_missing_interface_is_observed_as_absent() -> None:
    assert await MemoryKernel().observe("wg0") == ABSENT


async def test_a_new_link_is_down_with_the_default_mtu_and_nothing_configured() -> None:
    kernel = await kernel_with_device()
    state = await kernel.observe("wg0")
    assert state.exists
    assert not state.up
    assert state.mtu == DEFAULT_MTU == 1420
    assert state.private_key is None
    assert (state.listen_port, state.fwmark) == (0, 0)
    assert (state.addresses, dict(state.peers), state.routes) == (frozenset(), {}, frozenset())


async def test_device_settings_are_applied_and_read_back() -> None:
    kernel = await kernel_with_device()
    await kernel.apply(
        "wg0",
        [
            SetMtu(1280),
            AddAddress(iface("100.96.0.1/24")),
            SetUp(),
            ConfigureDevice(private_key=priv("k"), listen_port=51820, fwmark=0x10),
        ],
    )
    state = await kernel.observe("wg0")
    assert (state.up, state.mtu, state.listen_port, state.fwmark) == (True, 1280, 51820, 0x10)
    assert state.addresses == frozenset({iface("100.96.0.1/24")})
    assert state.private_key == priv("k")


async def test_the_private_key_is_stored_clamped_as_the_kernel_does() -> None:
    kernel = await kernel_with_device()
    await kernel.apply("wg0", [ConfigureDevice(private_key=PrivateKey(b"\xff" * 32))])
    state = await kernel.observe("wg0")
    assert state.private_key == PrivateKey(b"\xff" * 32).clamped()


async def test_none_fields_of_configure_device_are_left_unchanged() -> None:
    kernel = await kernel_with_device()
    await kernel.apply("wg0", [ConfigureDevice(private_key=priv("k"), listen_port=1, fwmark=2)])
    await kernel.apply("wg0", [ConfigureDevice(fwmark=0)])
    state = await kernel.observe("wg0")
    assert (state.private_key, state.listen_port, state.fwmark) == (priv("k"), 1, 0)


async def test_a_peer_is_created_and_read_back() -> None:
    kernel = await kernel_with_device()
    await kernel.apply(
        "wg0",
        [UpsertPeer(P1, E1, nets("10.0.1.0/24", "fd00::/64"), 25, psk(1), new=True)],
    )
    peer = (await kernel.observe("wg0")).peers[P1]
    assert peer.endpoint == E1
    assert peer.allowed_ips == frozenset(nets("10.0.1.0/24", "fd00::/64"))
    assert peer.persistent_keepalive == 25
    assert peer.preshared_key == psk(1)
    assert peer.last_handshake == 0.0


async def test_none_fields_of_an_upsert_leave_the_peer_as_it_is() -> None:
    kernel = await kernel_with_device()
    await kernel.apply("wg0", [UpsertPeer(P1, E1, nets("10.0.1.0/24"), 25, psk(1), new=True)])
    await kernel.apply("wg0", [UpsertPeer(P1)])
    peer = (await kernel.observe("wg0")).peers[P1]
    assert (peer.endpoint, peer.persistent_keepalive, peer.preshared_key) == (E1, 25, psk(1))
    assert peer.allowed_ips == frozenset(nets("10.0.1.0/24"))


async def test_a_zero_keepalive_and_an_all_zero_preshared_key_clear_them() -> None:
    kernel = await kernel_with_device()
    await kernel.apply("wg0", [UpsertPeer(P1, None, (), 25, psk(1), new=True)])
    await kernel.apply(
        "wg0", [UpsertPeer(P1, persistent_keepalive=0, preshared_key=PresharedKey.zero())]
    )
    peer = (await kernel.observe("wg0")).peers[P1]
    assert (peer.persistent_keepalive, peer.preshared_key) == (0, None)


async def test_allowed_ips_are_replaced_not_appended() -> None:
    kernel = await kernel_with_device()
    await kernel.apply("wg0", [UpsertPeer(P1, None, nets("10.0.1.0/24", "10.0.2.0/24"))])
    await kernel.apply("wg0", [UpsertPeer(P1, allowed_ips=nets("10.0.3.0/24"))])
    peer = (await kernel.observe("wg0")).peers[P1]
    assert peer.allowed_ips == frozenset(nets("10.0.3.0/24"))


async def test_a_prefix_given_to_another_peer_moves_to_it() -> None:
    kernel = await kernel_with_device()
    await kernel.apply("wg0", [UpsertPeer(P1, None, nets("10.0.1.0/24", "10.0.2.0/24"))])
    await kernel.apply("wg0", [UpsertPeer(P2, None, nets("10.0.1.0/24"))])
    peers = (await kernel.observe("wg0")).peers
    assert peers[P1].allowed_ips == frozenset(nets("10.0.2.0/24"))
    assert peers[P2].allowed_ips == frozenset(nets("10.0.1.0/24"))


async def test_a_nested_prefix_on_another_peer_does_not_move() -> None:
    # The kernel's trie holds 10.0.0.0/16 and 10.0.1.0/24 side by side (longest match).
    kernel = await kernel_with_device()
    await kernel.apply("wg0", [UpsertPeer(P1, None, nets("10.0.1.0/24"))])
    await kernel.apply("wg0", [UpsertPeer(P2, None, nets("10.0.0.0/16"))])
    peers = (await kernel.observe("wg0")).peers
    assert peers[P1].allowed_ips == frozenset(nets("10.0.1.0/24"))
    assert peers[P2].allowed_ips == frozenset(nets("10.0.0.0/16"))


async def test_removing_what_is_absent_succeeds_and_adding_what_is_present_is_harmless() -> None:
    kernel = await kernel_with_device()
    await kernel.apply(
        "wg0",
        [
            AddAddress(iface("100.96.0.1/24")),
            AddAddress(iface("100.96.0.1/24")),
            AddRoute(net("10.0.0.0/8")),
            AddRoute(net("10.0.0.0/8")),
            RemovePeer(P3),
            RemoveRoute(net("10.9.0.0/16")),
            RemoveAddress(iface("10.9.9.9/32")),
        ],
    )
    state = await kernel.observe("wg0")
    assert state.addresses == frozenset({iface("100.96.0.1/24")})
    assert state.routes == frozenset(nets("10.0.0.0/8"))
    assert dict(state.peers) == {}


async def test_removals_take_effect() -> None:
    kernel = await kernel_with_device()
    await kernel.apply(
        "wg0",
        [AddAddress(iface("100.96.0.1/24")), AddRoute(net("10.0.0.0/8")), UpsertPeer(P1)],
    )
    await kernel.apply(
        "wg0",
        [RemoveRoute(net("10.0.0.0/8")), RemovePeer(P1), RemoveAddress(iface("100.96.0.1/24"))],
    )
    state = await kernel.observe("wg0")
    assert (state.addresses, dict(state.peers), state.routes) == (frozenset(), {}, frozenset())


@pytest.mark.parametrize(
    "op",
    [
        pytest.param(SetMtu(1420), id="SetMtu"),
        pytest.param(SetUp(), id="SetUp"),
        pytest.param(AddAddress(iface("10.0.0.1/24")), id="AddAddress"),
        pytest.param(RemoveAddress(iface("10.0.0.1/24")), id="RemoveAddress"),
        pytest.param(ConfigureDevice(listen_port=1), id="ConfigureDevice"),
        pytest.param(UpsertPeer(P1), id="UpsertPeer"),
        pytest.param(RemovePeer(P1), id="RemovePeer"),
        pytest.param(AddRoute(net("10.0.0.0/8")), id="AddRoute"),
        pytest.param(RemoveRoute(net("10.0.0.0/8")), id="RemoveRoute"),
    ],
)
async def test_an_operation_on_a_missing_interface_raises_device_not_found(op: Operation) -> None:
    kernel = await kernel_with_device()
    with pytest.raises(DeviceNotFound, match="wg1"):
        await kernel.apply("wg1", [op])
    assert await kernel.observe("wg1") == ABSENT


async def test_creating_a_link_that_exists_adopts_it_unchanged() -> None:
    kernel = await kernel_with_device()
    before = await kernel.observe("wg0")
    await kernel.apply("wg0", [CreateLink("wg0")])
    assert await kernel.observe("wg0") == before


async def test_writes_count_only_the_operations_that_succeeded() -> None:
    kernel = MemoryKernel()
    await kernel.apply("wg0", [CreateLink("wg0"), SetUp(), SetMtu(1280)])
    assert kernel.writes == 3
    await kernel.apply("wg0", [])
    assert kernel.writes == 3
    with pytest.raises(DeviceNotFound):
        await kernel.apply("wg1", [SetUp()])
    assert kernel.writes == 3
    await kernel.delete("wg0")
    assert kernel.writes == 4
    with pytest.raises(DeviceNotFound):
        await kernel.apply("wg0", [SetMtu(1400), SetUp()])
    assert kernel.writes == 4


async def test_delete_removes_the_device_and_counts_one_write() -> None:
    kernel = await kernel_with_device()
    await kernel.delete("wg0")
    assert await kernel.observe("wg0") == ABSENT
    assert kernel.writes == 2
    await kernel.delete("wg0")
    assert kernel.writes == 2


async def test_a_learned_endpoint_changes_the_peer_without_a_write() -> None:
    kernel = await kernel_with_device()
    await kernel.apply("wg0", [UpsertPeer(P1, E1, nets("10.0.1.0/24"))])
    kernel.learn_endpoint("wg0", P1, E2)
    assert (await kernel.observe("wg0")).peers[P1].endpoint == E2
    assert kernel.writes == 2


async def test_state_persists_in_a_file_across_instances_with_a_running_write_count(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kernel.json"
    first = await kernel_with_device(path)
    await first.apply("wg0", [SetUp(), UpsertPeer(P1, E1, nets("10.0.1.0/24"), 25, psk(1))])
    assert json.loads(path.read_text())["writes"] == 3

    second = MemoryKernel(path)
    assert await second.observe("wg0") == await first.observe("wg0")
    assert second.writes == 0
    await second.apply("wg0", [AddRoute(net("10.0.1.0/24")), SetMtu(1280)])
    assert (first.writes, second.writes) == (3, 2)
    assert json.loads(path.read_text())["writes"] == 5

    state = await first.observe("wg0")  # the first instance sees the second one's writes
    assert state.routes == frozenset(nets("10.0.1.0/24"))
    assert state.mtu == 1280
    assert state.peers[P1].preshared_key == psk(1)


async def test_a_learned_endpoint_is_persisted_without_counting_a_write(tmp_path: Path) -> None:
    path = tmp_path / "kernel.json"
    kernel = await kernel_with_device(path)
    await kernel.apply("wg0", [UpsertPeer(P1, E1, nets("10.0.1.0/24"))])
    kernel.learn_endpoint("wg0", P1, E2)
    assert (await MemoryKernel(path).observe("wg0")).peers[P1].endpoint == E2
    assert json.loads(path.read_text())["writes"] == 2


async def test_the_state_file_never_holds_a_half_written_state(tmp_path: Path) -> None:
    path = tmp_path / "kernel.json"
    kernel = await kernel_with_device(path)
    await kernel.apply("wg0", [SetUp()])
    assert [p.name for p in tmp_path.glob("*")] == ["kernel.json"]  # noqa: ASYNC240
    assert json.loads(path.read_text())["devices"]["wg0"]["up"] is True


async def test_close_is_harmless() -> None:
    kernel = await kernel_with_device()
    await kernel.close()
    assert (await kernel.observe("wg0")).exists


async def test_the_journal_gets_one_line_per_operation_applied_and_no_key_material(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal.jsonl"
    kernel = MemoryKernel(journal_path=journal)
    await kernel.apply(
        "wg0",
        [
            CreateLink("wg0"),
            ConfigureDevice(private_key=priv("hub"), listen_port=51820),
            UpsertPeer(P1, allowed_ips=nets("10.0.1.0/24")),
        ],
    )
    await kernel.apply("wg0", [AddRoute(net("10.0.1.0/24"))])
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [line["op"] for line in lines] == [
        "CreateLink",
        "ConfigureDevice",
        "UpsertPeer",
        "AddRoute",
    ]
    assert lines[1]["private_key"] == "(secret)"
    assert lines[2]["public_key"] == P1.b64
    assert lines[2]["allowed_ips"] == ["10.0.1.0/24"]
    assert lines[3]["destination"] == "10.0.1.0/24"
    assert priv("hub").b64 not in journal.read_text()

"""Observed kernel state vs desired state -> the fewest operations, in a fixed order."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace

import pytest

from tests.unit.builders import ep, iface, net, nets, priv, psk
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.diff.model import (
    ABSENT,
    AddAddress,
    AddRoute,
    ConfigureDevice,
    CreateLink,
    ObservedPeer,
    ObservedState,
    Operation,
    RemoveAddress,
    RemovePeer,
    RemoveRoute,
    SetMtu,
    SetUp,
    UpsertPeer,
)
from wgkube.diff.plan import EndpointMemory, describe, plan
from wgkube.domain.keys import PresharedKey, PrivateKey, PublicKey
from wgkube.domain.net import Endpoint
from wgkube.kernel.memory import MemoryKernel

KEY = priv("device")
OTHER_KEY = priv("other")
P1, P2, P3, P4 = (PublicKey(bytes([i]) * 32) for i in (1, 2, 3, 4))
E1, E2, E3 = ep("203.0.113.1:51820"), ep("203.0.113.2:51820"), ep("[2001:db8::3]:51820")
A4, A6 = iface("100.96.0.1/24"), iface("fd96::1/64")
ZERO = PresharedKey.zero()

DEVICE = DeviceSpec(name="wg0", private_key=KEY, listen_port=51820, addresses=(A4, A6), mtu=1420)
PEER1 = PeerSpec(P1, E1, nets("10.0.1.0/24"), persistent_keepalive=25)
PEER2 = PeerSpec(P2, None, nets("fd00:2::/64", "10.0.2.0/24"), preshared_key=psk(2))
ROUTES = frozenset(nets("10.0.1.0/24", "10.0.2.0/24", "fd00:2::/64"))
DESIRED = DesiredState(device=DEVICE, peers={P1: PEER1, P2: PEER2}, routes=ROUTES)


def observed_peer(spec: PeerSpec) -> ObservedPeer:
    key = spec.preshared_key
    return ObservedPeer(
        public_key=spec.public_key,
        endpoint=spec.endpoint,
        allowed_ips=frozenset(spec.allowed_ips),
        persistent_keepalive=spec.persistent_keepalive,
        preshared_key=None if key is None or key.is_zero else key,
    )


def converged(desired: DesiredState = DESIRED, **changes: object) -> ObservedState:
    """What the kernel reports once `desired` is applied, then with `changes`."""
    device = desired.device
    state = ObservedState(
        exists=True,
        up=True,
        mtu=device.mtu or 1420,
        addresses=frozenset(device.addresses),
        private_key=device.private_key.clamped(),
        listen_port=device.listen_port or 40123,
        fwmark=device.fwmark,
        peers={k: observed_peer(p) for k, p in (desired.peers or {}).items()},
        routes=desired.routes,
    )
    return replace(state, **changes)  # type: ignore[arg-type]


def with_peer(observed: ObservedState, key: PublicKey, **changes: object) -> ObservedState:
    peers = dict(observed.peers)
    peers[key] = replace(peers[key], **changes)  # type: ignore[arg-type]
    return replace(observed, peers=peers)


def desired_with(
    *,
    device: DeviceSpec = DEVICE,
    peers: Mapping[PublicKey, PeerSpec] | None = None,
    routes: frozenset[object] | None = None,
    **peer_changes: PeerSpec,
) -> DesiredState:
    chosen = dict(DESIRED.peers or {}) if peers is None else dict(peers)
    return DesiredState(
        device=device,
        peers=chosen,
        routes=ROUTES if routes is None else routes,  # type: ignore[arg-type]
    )


def peer1(**changes: object) -> dict[PublicKey, PeerSpec]:
    return {P1: replace(PEER1, **changes), P2: PEER2}  # type: ignore[arg-type]


def peer2(**changes: object) -> dict[PublicKey, PeerSpec]:
    return {P1: PEER1, P2: replace(PEER2, **changes)}  # type: ignore[arg-type]


# -- the table -----------------------------------------------------------------------------

CASES = [
    pytest.param(
        DESIRED,
        ABSENT,
        None,
        (
            CreateLink("wg0"),
            SetMtu(1420),
            AddAddress(A4),
            AddAddress(A6),
            SetUp(),
            ConfigureDevice(private_key=KEY, listen_port=51820),
            UpsertPeer(P1, E1, nets("10.0.1.0/24"), persistent_keepalive=25, new=True),
            UpsertPeer(
                P2, None, nets("10.0.2.0/24", "fd00:2::/64"), preshared_key=psk(2), new=True
            ),
            AddRoute(net("10.0.1.0/24")),
            AddRoute(net("10.0.2.0/24")),
            AddRoute(net("fd00:2::/64")),
        ),
        id="absent-device-create-mtu-address-up-configure-peers-routes",
    ),
    pytest.param(
        DesiredState(replace(DEVICE, mtu=None, listen_port=None, fwmark=0x10, addresses=())),
        ABSENT,
        None,
        (CreateLink("wg0"), SetUp(), ConfigureDevice(private_key=KEY, fwmark=0x10)),
        id="absent-device-without-peers-mtu-or-port",
    ),
    pytest.param(DESIRED, converged(), None, (), id="nothing-to-do"),
    pytest.param(DESIRED, converged(), {}, (), id="nothing-to-do-empty-memory"),
    pytest.param(DESIRED, converged(), {P1: E1, P2: None}, (), id="nothing-to-do-with-memory"),
    # -- the device, one field at a time
    pytest.param(
        DESIRED,
        converged(private_key=OTHER_KEY),
        None,
        (ConfigureDevice(private_key=KEY),),
        id="private-key-changed",
    ),
    pytest.param(
        DESIRED,
        converged(private_key=None),
        None,
        (ConfigureDevice(private_key=KEY),),
        id="private-key-unset",
    ),
    pytest.param(
        desired_with(device=replace(DEVICE, private_key=PrivateKey(b"\xff" * 32))),
        converged(private_key=PrivateKey(b"\xff" * 32).clamped()),
        None,
        (),
        id="unclamped-desired-key-equals-the-clamped-kernel-key",
    ),
    pytest.param(
        DESIRED,
        converged(listen_port=40000),
        None,
        (ConfigureDevice(listen_port=51820),),
        id="listen-port-changed",
    ),
    pytest.param(
        desired_with(device=replace(DEVICE, listen_port=None)),
        converged(listen_port=40000),
        None,
        (),
        id="listen-port-none-means-dont-care",
    ),
    pytest.param(
        desired_with(device=replace(DEVICE, fwmark=0xCA6C)),
        converged(),
        None,
        (ConfigureDevice(fwmark=0xCA6C),),
        id="fwmark-set",
    ),
    pytest.param(
        DESIRED,
        converged(fwmark=0x10),
        None,
        (ConfigureDevice(fwmark=0),),
        id="fwmark-cleared-explicitly",
    ),
    pytest.param(
        desired_with(device=replace(DEVICE, fwmark=7)),
        converged(private_key=OTHER_KEY, listen_port=1),
        None,
        (ConfigureDevice(private_key=KEY, listen_port=51820, fwmark=7),),
        id="several-device-fields-in-one-configure",
    ),
    pytest.param(DESIRED, converged(mtu=1500), None, (SetMtu(1420),), id="mtu-changed"),
    pytest.param(
        desired_with(device=replace(DEVICE, mtu=None)),
        converged(mtu=1500),
        None,
        (),
        id="mtu-none-means-dont-care",
    ),
    pytest.param(DESIRED, converged(up=False), None, (SetUp(),), id="link-down"),
    pytest.param(
        DESIRED,
        converged(addresses=frozenset({A4})),
        None,
        (AddAddress(A6),),
        id="address-missing",
    ),
    pytest.param(
        DESIRED,
        converged(addresses=frozenset({A4, A6, iface("10.9.9.9/32")})),
        None,
        (RemoveAddress(iface("10.9.9.9/32")),),
        id="address-extra",
    ),
    pytest.param(
        DESIRED,
        converged(addresses=frozenset({iface("100.96.0.1/32"), A6})),
        None,
        (AddAddress(A4), RemoveAddress(iface("100.96.0.1/32"))),
        id="address-prefix-changed-add-first-remove-last",
    ),
    # -- peers
    pytest.param(
        desired_with(peers={**peer1(), P3: PeerSpec(P3, E3, nets("10.0.3.0/24", "10.0.3.0/24"))}),
        converged(),
        None,
        (UpsertPeer(P3, E3, nets("10.0.3.0/24"), new=True),),
        id="new-peer-full-upsert",
    ),
    pytest.param(
        desired_with(
            peers={
                **peer1(),
                P3: PeerSpec(P3, None, (), persistent_keepalive=5, preshared_key=psk(3)),
            }
        ),
        converged(),
        None,
        (UpsertPeer(P3, None, (), persistent_keepalive=5, preshared_key=psk(3), new=True),),
        id="new-peer-with-keepalive-and-psk-but-no-endpoint",
    ),
    pytest.param(
        desired_with(peers=peer1(allowed_ips=nets("10.0.1.0/24", "10.1.0.0/16"))),
        converged(),
        None,
        (UpsertPeer(P1, allowed_ips=nets("10.0.1.0/24", "10.1.0.0/16")),),
        id="allowed-ips-added-replaces-the-list",
    ),
    pytest.param(
        DESIRED,
        with_peer(converged(), P1, allowed_ips=frozenset(nets("10.0.1.0/24", "10.9.0.0/16"))),
        None,
        (UpsertPeer(P1, allowed_ips=nets("10.0.1.0/24")),),
        id="allowed-ips-extra-in-kernel-replaces-the-list",
    ),
    pytest.param(
        desired_with(peers=peer2(allowed_ips=nets("10.0.2.0/24", "fd00:2::/64", "10.0.2.0/24"))),
        converged(),
        None,
        (),
        id="allowed-ips-same-set-in-another-order",
    ),
    pytest.param(
        desired_with(peers=peer1(persistent_keepalive=0)),
        converged(),
        None,
        (UpsertPeer(P1, persistent_keepalive=0),),
        id="keepalive-dropped-is-an-explicit-zero",
    ),
    pytest.param(
        desired_with(peers=peer1(persistent_keepalive=10)),
        converged(),
        None,
        (UpsertPeer(P1, persistent_keepalive=10),),
        id="keepalive-changed",
    ),
    pytest.param(
        desired_with(peers=peer2(preshared_key=None)),
        converged(),
        None,
        (UpsertPeer(P2, preshared_key=ZERO),),
        id="psk-dropped-is-the-all-zero-key",
    ),
    pytest.param(
        desired_with(peers=peer2(preshared_key=ZERO)),
        converged(),
        None,
        (UpsertPeer(P2, preshared_key=ZERO),),
        id="psk-set-to-zero-clears-it",
    ),
    pytest.param(
        desired_with(peers=peer1(preshared_key=ZERO)),
        converged(),
        None,
        (),
        id="psk-zero-and-kernel-has-none",
    ),
    pytest.param(
        desired_with(peers=peer2(preshared_key=psk(9))),
        converged(),
        None,
        (UpsertPeer(P2, preshared_key=psk(9)),),
        id="psk-changed",
    ),
    pytest.param(
        desired_with(peers=peer1(preshared_key=psk(1))),
        converged(),
        None,
        (UpsertPeer(P1, preshared_key=psk(1)),),
        id="psk-added",
    ),
    # -- endpoints: published vs learned
    pytest.param(
        DESIRED,
        with_peer(converged(), P2, endpoint=E3),
        {P1: E1, P2: None},
        (),
        id="endpoint-none-keeps-the-learned-endpoint",
    ),
    pytest.param(
        DESIRED,
        with_peer(converged(), P2, endpoint=E3),
        None,
        (),
        id="endpoint-none-keeps-the-learned-endpoint-without-memory",
    ),
    pytest.param(
        desired_with(peers=peer1(endpoint=E2)),
        converged(),
        {P1: E1, P2: None},
        (UpsertPeer(P1, endpoint=E2),),
        id="endpoint-changed-since-applied-is-written",
    ),
    pytest.param(
        DESIRED,
        with_peer(converged(), P1, endpoint=E3),
        {P1: E1, P2: None},
        (),
        id="endpoint-as-applied-but-peer-roamed-is-not-written",
    ),
    pytest.param(
        desired_with(peers=peer1(endpoint=E2)),
        with_peer(converged(), P1, endpoint=E3),
        {P1: E1, P2: None},
        (UpsertPeer(P1, endpoint=E2),),
        id="endpoint-republished-after-roaming-is-written",
    ),
    pytest.param(
        desired_with(peers=peer1(endpoint=E2)),
        with_peer(converged(), P1, endpoint=E2),
        {P1: E1, P2: None},
        (),
        id="endpoint-republished-where-the-peer-already-roamed-is-not-rewritten",
    ),
    pytest.param(
        DESIRED,
        with_peer(converged(), P1, endpoint=E3),
        None,
        (UpsertPeer(P1, endpoint=E1),),
        id="no-memory-the-kernel-is-the-baseline-and-differs",
    ),
    pytest.param(
        DESIRED,
        with_peer(converged(), P1, endpoint=E3),
        {},
        (UpsertPeer(P1, endpoint=E1),),
        id="peer-not-in-memory-the-kernel-is-the-baseline",
    ),
    pytest.param(
        DESIRED,
        with_peer(converged(), P1, endpoint=None),
        None,
        (UpsertPeer(P1, endpoint=E1),),
        id="no-memory-kernel-has-no-endpoint",
    ),
    pytest.param(
        DESIRED,
        with_peer(converged(), P1, endpoint=E3),
        {P1: None},
        (UpsertPeer(P1, endpoint=E1),),
        id="endpoint-published-for-the-first-time-is-written",
    ),
    # -- routes and removals
    pytest.param(
        desired_with(routes=ROUTES | {net("10.0.0.0/8"), net("10.0.0.0/16"), net("9.0.0.0/8")}),
        converged(),
        None,
        (AddRoute(net("9.0.0.0/8")), AddRoute(net("10.0.0.0/8")), AddRoute(net("10.0.0.0/16"))),
        id="routes-added-in-numeric-order",
    ),
    pytest.param(
        desired_with(routes=frozenset(nets("10.0.1.0/24"))),
        converged(),
        None,
        (RemoveRoute(net("10.0.2.0/24")), RemoveRoute(net("fd00:2::/64"))),
        id="routes-removed",
    ),
    pytest.param(
        desired_with(peers={P2: PEER2}),
        converged(),
        None,
        (RemovePeer(P1),),
        id="peer-removed",
    ),
    pytest.param(
        desired_with(peers={}, routes=frozenset()),
        converged(),
        None,
        (
            RemoveRoute(net("10.0.1.0/24")),
            RemoveRoute(net("10.0.2.0/24")),
            RemoveRoute(net("fd00:2::/64")),
            RemovePeer(P1),
            RemovePeer(P2),
        ),
        id="empty-peer-set-removes-everything-routes-first",
    ),
    pytest.param(
        DesiredState(device=DEVICE, peers=None, routes=frozenset()),
        converged(
            peers={P3: ObservedPeer(P3, allowed_ips=frozenset(nets("10.3.0.0/16")))},
            routes=frozenset(nets("10.3.0.0/16")),
        ),
        None,
        (),
        id="peers-none-leaves-peers-and-routes",
    ),
    pytest.param(
        DesiredState(device=replace(DEVICE, addresses=(A6,)), peers=None),
        converged(),
        None,
        (RemoveAddress(A4),),
        id="peers-none-still-manages-the-device",
    ),
    pytest.param(
        desired_with(
            device=replace(DEVICE, addresses=(A6, iface("100.96.0.9/24"))),
            peers={P1: PEER1, P3: PeerSpec(P3, None, nets("10.0.3.0/24"))},
            routes=frozenset(nets("10.0.1.0/24", "10.0.3.0/24")),
        ),
        converged(
            peers={**converged().peers, P4: ObservedPeer(P4)},
        ),
        None,
        (
            AddAddress(iface("100.96.0.9/24")),
            UpsertPeer(P3, None, nets("10.0.3.0/24"), new=True),
            AddRoute(net("10.0.3.0/24")),
            RemoveRoute(net("10.0.2.0/24")),
            RemoveRoute(net("fd00:2::/64")),
            RemovePeer(P2),
            RemovePeer(P4),
            RemoveAddress(A4),
        ),
        id="additions-first-then-removals-routes-peers-addresses",
    ),
    pytest.param(
        desired_with(
            peers={P1: replace(PEER1, allowed_ips=nets("10.0.1.0/24", "10.0.2.0/24"))},
            routes=frozenset(nets("10.0.1.0/24", "10.0.2.0/24")),
        ),
        converged(),
        None,
        (
            UpsertPeer(P1, allowed_ips=nets("10.0.1.0/24", "10.0.2.0/24")),
            RemoveRoute(net("fd00:2::/64")),
            RemovePeer(P2),
        ),
        id="prefix-moves-to-a-kept-peer-before-its-owner-is-removed",
    ),
]


@pytest.mark.parametrize(("desired", "observed", "applied", "expected"), CASES)
def test_plan_gives_exactly_the_expected_operations(
    desired: DesiredState,
    observed: ObservedState,
    applied: EndpointMemory | None,
    expected: tuple[Operation, ...],
) -> None:
    assert plan(desired, observed, applied_endpoints=applied) == expected


def test_plan_is_a_tuple_and_empty_when_converged() -> None:
    result = plan(DESIRED, converged())
    assert isinstance(result, tuple)
    assert not result


# -- describe ----------------------------------------------------------------------------------

EVERY_OP: tuple[Operation, ...] = (
    CreateLink("wg0"),
    SetMtu(1420),
    AddAddress(A4),
    SetUp(),
    ConfigureDevice(private_key=KEY, listen_port=51820, fwmark=0x10),
    UpsertPeer(P1, E1, nets("10.0.1.0/24", "fd00::/64"), 25, psk(1), new=True),
    UpsertPeer(P2, allowed_ips=()),
    UpsertPeer(P2, persistent_keepalive=0, preshared_key=ZERO),
    AddRoute(net("10.0.1.0/24")),
    RemoveRoute(net("10.0.2.0/24")),
    RemovePeer(P3),
    RemoveAddress(A6),
)


def test_describe_gives_one_readable_line_per_operation() -> None:
    short = {k: k.short() for k in (P1, P2, P3)}
    assert describe(EVERY_OP) == [
        "create link wg0",
        "set mtu 1420",
        "add address 100.96.0.1/24",
        "set link up",
        f"configure device private-key (public {KEY.public_key().short()}), "
        "listen-port 51820, fwmark 0x10",
        f"add peer {short[P1]} endpoint 203.0.113.1:51820, allowed-ips 10.0.1.0/24,fd00::/64, "
        "keepalive 25, preshared-key set",
        f"update peer {short[P2]} allowed-ips (none)",
        f"update peer {short[P2]} keepalive off, preshared-key cleared",
        "add route 10.0.1.0/24",
        "remove route 10.0.2.0/24",
        f"remove peer {short[P3]}",
        "remove address fd96::1/64",
    ]


def test_describe_never_shows_a_private_or_preshared_key() -> None:
    secrets = [KEY.b64, KEY.raw.hex(), psk(1).b64, psk(1).raw.hex()]
    text = "\n".join(describe(EVERY_OP))
    for secret in secrets:
        assert secret not in text
    assert KEY.public_key().short() in text


def test_describe_of_nothing_is_nothing() -> None:
    assert describe(()) == []


# -- idempotence: apply the plan, plan again, expect nothing ----------------------------------

PRIVATE_KEYS = [priv("a"), priv("b"), PrivateKey(b"\xff" * 32)]
ADDRESSES = [iface(a) for a in ("100.96.0.1/24", "100.96.0.1/32", "fd96::1/64", "10.9.0.1/16")]
PEER_KEYS = [PublicKey(bytes([i]) * 32) for i in range(1, 11)]
ENDPOINTS: list[Endpoint | None] = [None, E1, E2, E3]
PSKS: list[PresharedKey | None] = [None, None, ZERO, psk(1), psk(2)]
SHARED = nets("192.168.0.0/24", "192.168.1.0/24", "fd99::/64")
ROAMED = ep("198.51.100.77:40000")


def random_device(rng: random.Random) -> DeviceSpec:
    return DeviceSpec(
        name="wg0",
        private_key=rng.choice(PRIVATE_KEYS),
        listen_port=rng.choice([None, 51820, 51821]),
        fwmark=rng.choice([0, 0, 0x10, 0xCA6C]),
        addresses=tuple(rng.sample(ADDRESSES, rng.randint(0, 3))),
        mtu=rng.choice([None, 1280, 1420, 1500]),
    )


def random_peers(rng: random.Random) -> dict[PublicKey, PeerSpec]:
    keys = rng.sample(PEER_KEYS, rng.randint(0, 6))
    allowed: dict[PublicKey, list[object]] = {}
    for key in keys:
        i = key.raw[0]
        region = nets(f"10.{i}.0.0/16", f"10.{i}.1.0/24", f"10.{i}.3.7/32", f"fd00:{i}::/64")
        allowed[key] = list(rng.sample(region, rng.randint(0, 3)))
    for prefix in SHARED:  # prefixes that move from one peer to another
        if keys and rng.random() < 0.6:
            allowed[rng.choice(keys)].append(prefix)
    return {
        key: PeerSpec(
            public_key=key,
            endpoint=rng.choice(ENDPOINTS),
            allowed_ips=tuple(allowed[key]),  # type: ignore[arg-type]
            persistent_keepalive=rng.choice([0, 0, 10, 25]),
            preshared_key=rng.choice(PSKS),
        )
        for key in keys
    }


def random_routes(rng: random.Random, peers: Mapping[PublicKey, PeerSpec] | None) -> frozenset:  # type: ignore[type-arg]
    pool = [n for p in (peers or {}).values() for n in p.allowed_ips] + list(nets("172.16.0.0/12"))
    return frozenset(rng.sample(pool, rng.randint(0, len(pool))))


def random_desired(rng: random.Random) -> DesiredState:
    peers = None if rng.random() < 0.15 else random_peers(rng)
    return DesiredState(random_device(rng), peers, random_routes(rng, peers))


def mutated(rng: random.Random, desired: DesiredState) -> DesiredState:
    """A small change, as events bring: one field of the device, one peer, the routes."""
    device, peers = desired.device, dict(desired.peers or {})
    choice = rng.randrange(9)
    if choice == 0:
        device = replace(device, private_key=rng.choice(PRIVATE_KEYS))
    elif choice == 1:
        device = replace(
            device,
            listen_port=rng.choice([None, 51820, 51821]),
            fwmark=rng.choice([0, 0x10]),
            mtu=rng.choice([None, 1280, 1420]),
        )
    elif choice == 2:
        device = replace(device, addresses=tuple(rng.sample(ADDRESSES, rng.randint(0, 3))))
    elif choice == 3 and peers:
        del peers[rng.choice(sorted(peers))]
    elif choice in (4, 5, 6) and peers:
        key = rng.choice(sorted(peers))
        peers[key] = replace(
            peers[key],
            endpoint=rng.choice(ENDPOINTS) if choice == 4 else peers[key].endpoint,
            persistent_keepalive=rng.choice([0, 25])
            if choice == 5
            else peers[key].persistent_keepalive,
            preshared_key=rng.choice(PSKS) if choice == 6 else peers[key].preshared_key,
        )
    elif choice == 7:
        fresh = random_peers(rng)
        peers = fresh
    else:
        return DesiredState(device, None if rng.random() < 0.3 else desired.peers, desired.routes)
    return DesiredState(device, peers, random_routes(rng, peers))


def assert_kernel_matches(desired: DesiredState, observed: ObservedState, *, roaming: bool) -> None:
    """The kernel really holds the desired state: an empty plan alone could be vacuous."""
    device = desired.device
    assert observed.exists
    assert observed.up
    assert observed.private_key == device.private_key.clamped()
    assert observed.fwmark == device.fwmark
    assert observed.addresses == frozenset(device.addresses)
    if device.listen_port is not None:
        assert observed.listen_port == device.listen_port
    if device.mtu is not None:
        assert observed.mtu == device.mtu
    if desired.peers is None:
        return
    assert set(observed.peers) == set(desired.peers)
    for key, want in desired.peers.items():
        have = observed.peers[key]
        assert have.allowed_ips == frozenset(want.allowed_ips)
        assert have.persistent_keepalive == want.persistent_keepalive
        want_psk = (
            None if want.preshared_key is None or want.preshared_key.is_zero else want.preshared_key
        )
        assert have.preshared_key == want_psk
        if want.endpoint is not None:
            assert have.endpoint in ({want.endpoint, ROAMED} if roaming else {want.endpoint})
    assert observed.routes == desired.routes


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize(
    ("memory", "roaming"),
    [
        pytest.param(True, True, id="memory-roaming"),
        pytest.param(True, False, id="memory"),
        pytest.param(False, True, id="no-memory-roaming"),
    ],
)
async def test_applying_a_plan_then_planning_again_gives_nothing(
    seed: int, memory: bool, roaming: bool
) -> None:
    rng = random.Random(seed)
    kernel = MemoryKernel()
    applied: dict[PublicKey, Endpoint | None] = {}
    desired = random_desired(rng)
    changed = 0
    for step in range(10):
        if step:
            desired = random_desired(rng) if rng.random() < 0.3 else mutated(rng, desired)
        before = await kernel.observe("wg0")
        if roaming and before.peers and rng.random() < 0.5:
            kernel.learn_endpoint("wg0", rng.choice(sorted(before.peers)), ROAMED)
            before = await kernel.observe("wg0")
        memo = applied if memory else None
        ops = plan(desired, before, applied_endpoints=memo)
        changed += bool(ops)
        await kernel.apply("wg0", ops)
        if desired.peers is not None:
            applied = {k: p.endpoint for k, p in desired.peers.items()}
        after = await kernel.observe("wg0")
        writes = kernel.writes
        assert plan(desired, after, applied_endpoints=applied if memory else None) == ()
        assert_kernel_matches(desired, after, roaming=roaming)
        assert kernel.writes == writes
    assert changed >= 3, "the generator must actually change things"

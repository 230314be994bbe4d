"""The codec against the real data plane: every annotation value the codec accepts is taken
by a real device (wireguard-go on the host, kernel WireGuard in the VM), which reports back
exactly what the codec produced. Values are generated (valid and hostile) by hypothesis
with a fixed profile, so a run is deterministic and bounded.
"""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from tests.kernel.conftest import Harness
from wgkube.desired.hub import hub_state
from wgkube.desired.model import CONFLICT, DeviceSpec
from wgkube.diff.plan import plan
from wgkube.domain.annotations import DEFAULT_MAX_PEER_PREFIXES, Keys, decode_peer
from wgkube.domain.errors import AnnotationError, KernelError
from wgkube.domain.keys import PrivateKey

KEYS = Keys()
DEVICE_KEY = PrivateKey.generate()

EXAMPLES = 25 if os.environ.get("WGKUBE_IN_VM") else 500
"""Inside the emulated VM every example costs tens of netlink round trips at TCG speed."""

PROFILE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=EXAMPLES,
    # One device serves every example (the plan replaces the peer each time).
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def _network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, length: int) -> str:
    return str(ipaddress.ip_network(f"{address}/{length}", strict=False))


v4_prefix = st.builds(
    _network,
    st.ip_addresses(v=4),
    st.one_of(st.sampled_from([0, 1, 8, 24, 31, 32]), st.integers(0, 32)),
)
v6_prefix = st.builds(
    _network,
    st.ip_addresses(v=6),
    st.one_of(st.sampled_from([0, 1, 64, 127, 128]), st.integers(0, 128)),
)
hostile_prefix = st.one_of(
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(), st.integers(-1, 130)),  # host bits
    st.builds(lambda a, z: f"{a}%{z}/128", st.ip_addresses(v=6), st.sampled_from(["eth0", "1"])),
    st.builds(lambda a: f"{a}".upper(), v6_prefix),
    st.builds(lambda a: f"{a}/255.255.0.0", st.ip_addresses(v=4)),
    st.sampled_from(
        [
            "0.0.0.0/0",
            "::/0",
            "127.0.0.1/32",
            "::1/128",
            "224.0.0.0/4",
            "ff02::1/128",
            "255.255.255.255/32",
            "::ffff:10.0.0.1/128",
            "010.0.0.0/8",
            "10.0.0.0/024",
            "1.2.3.4/32\n",
            "\u0967\u0966.0.0.0/8",
        ]
    ),
    st.text(max_size=20),
)
valid_prefix = st.one_of(v4_prefix, v6_prefix)
separator = st.sampled_from([",", ", ", " ", ",,", " ,\t"])


def _joined(items: list[str], sep: str) -> str:
    return sep.join(items)


allowed_ips = st.one_of(
    # Valid lists (often refused whole all the same: a default route, loopback...).
    st.builds(_joined, st.lists(valid_prefix, min_size=1, max_size=12), separator),
    st.builds(_joined, st.lists(valid_prefix, min_size=1, max_size=3), separator),
    # Valid and hostile entries mixed, duplicates included.
    st.builds(
        _joined,
        st.lists(st.one_of(valid_prefix, hostile_prefix), min_size=1, max_size=12).map(
            lambda items: items + items[:2]
        ),
        separator,
    ),
    # Huge lists around the cap, with duplicates.
    st.builds(
        lambda n, dup: ",".join([f"10.{i // 256}.{i % 256}.0/24" for i in range(n)] * dup),
        st.sampled_from([DEFAULT_MAX_PEER_PREFIXES, DEFAULT_MAX_PEER_PREFIXES + 1, 40]),
        st.sampled_from([1, 2]),
    ),
    st.text(max_size=60),
)
port = st.one_of(st.sampled_from([0, 1, 65535, 65536, 51820]), st.integers(-5, 70000))
valid_endpoint = st.one_of(
    st.none(),
    st.builds(lambda a, p: f"{a}:{p}", st.ip_addresses(v=4), st.integers(1, 65535)),
    st.builds(lambda a, p: f"[{a}]:{p}", st.ip_addresses(v=6), st.integers(1, 65535)),
    st.builds(str, st.ip_addresses()),
)
hostile_endpoint = st.one_of(
    st.builds(lambda a, p: f"{a}:{p}", st.ip_addresses(v=4), port),
    st.builds(lambda a, p: f"[{a}]:{p}", st.ip_addresses(v=6), port),
    st.builds(lambda a: f"[{a}%eth0]:51820", st.ip_addresses(v=6)),
    st.sampled_from(
        [
            "0.0.0.0:51820",
            "[::1]:51820",
            "[::1]",
            "224.0.0.1:51820",
            "host:1",
            "1.2.3.4:\u0665\u0661",
        ]
    ),
    st.text(max_size=30),
)
endpoint = st.one_of(valid_endpoint, valid_endpoint, hostile_endpoint)


def _short(annotations: dict[str, str]) -> str:
    """The value for a failure message; hypothesis prints it whole as well (note)."""
    text = repr(annotations)
    return text if len(text) < 600 else text[:600] + f"… ({len(text)} characters)"


def device(h: Harness) -> DeviceSpec:
    return DeviceSpec(name=h.ifname, private_key=DEVICE_KEY, listen_port=51820)


@pytest.mark.parametrize(
    "harness",
    [
        pytest.param("userspace", marks=pytest.mark.userspace, id="userspace"),
        pytest.param("kernel", marks=pytest.mark.kernel, id="kernel"),
    ],
    indirect=True,
)
@PROFILE
@given(allowed=allowed_ips, published=endpoint)
async def test_every_value_the_codec_accepts_the_data_plane_takes_and_reports_back_unchanged(
    harness: Harness, allowed: str, published: str | None
) -> None:
    # A new key each time: the plan removes the last example's peer, so nothing it left
    # (an endpoint, which an unpublished one keeps) can pass for this one's.
    peer_key = PrivateKey.generate().public_key()
    annotations = {KEYS.public_key: peer_key.b64, KEYS.allowed_ips: allowed}
    if published is not None:
        annotations[KEYS.endpoint] = published
    body = {"metadata": {"name": "spoke", "labels": {KEYS.peer: "true"}}}
    body["metadata"]["annotations"] = annotations
    note(f"annotations: {annotations!r}")
    shown = _short(annotations)
    try:
        record = decode_peer(body, KEYS)
    except AnnotationError as exc:
        event(f"refused by the codec: {exc.key.removeprefix(KEYS.prefix)}")
        return  # refused with a reason: an InvalidPeerConfig Event, nothing for the kernel
    event("applied to the device")
    desired, rejections = hub_state(device(harness), [record])
    if rejections:
        # Route safety, not the codec: allowed-ips that cover the peer's own endpoint
        # would route the tunnel into itself. A PeerConflict Event, nothing for the kernel.
        assert [r.reason for r in rejections] == [CONFLICT], (annotations, rejections)
        assert "covers the endpoint" in rejections[0].message, rejections
        event("refused by route safety: covers its own endpoint")
        return
    kernel = harness.adapter() if not harness.opened else harness.opened[0]
    ifname = harness.ifname
    ops = plan(desired, await kernel.observe(ifname))
    try:
        await kernel.apply(ifname, ops)
    except KernelError as exc:
        pytest.fail(f"the codec accepted {shown} but the {harness.backend} kernel refused: {exc}")
    observed = await kernel.observe(ifname)
    peer = observed.peers.get(peer_key)
    assert peer is not None, f"{shown}: the peer is not on the device"
    assert peer.allowed_ips == frozenset(record.allowed_ips), (
        f"{shown}: the device reports {sorted(map(str, peer.allowed_ips))}"
    )
    assert peer.endpoint == record.endpoint, f"{shown}: the device reports {peer.endpoint}"
    assert observed.routes == desired.routes, f"{shown}: routes {observed.routes}"
    assert plan(desired, observed) == (), f"{shown}: a second plan is not empty"

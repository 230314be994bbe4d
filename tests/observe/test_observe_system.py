"""Observability of a real hub and spokes over real WireGuard (wireguard-go on the host,
marker `userspace`; the kernel's inside the test VM, marker `kernel`): /metrics, Events,
conditions, `wg-kube status`, while one spoke's WireGuard underlay is cut and restored.

Two underlays (wgkube.testing.lab `make_internet`, `place`): every node is on the node
network, where the API server and the metrics are, and on a second bridge standing for the
internet, which carries WireGuard (the hub's endpoint is its ExternalIP there, each spoke's
its address there). So `ip link set eth1 down` in a spoke's namespace cuts its tunnel and
nothing else: the spoke still writes its condition over eth0."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.system.test_hub_and_spokes import skip_unless
from wgkube.observe.status import render_status
from wgkube.testing.lab import HUB_WG, SLOW, UNDERLAY, Lab, Node

PREFIX = "wireguard.kube/"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

pytestmark = pytest.mark.slow


def scrape(node: Node) -> str:
    with urllib.request.urlopen(f"http://{node.underlay}:9799/metrics", timeout=10) as response:
        return str(response.read().decode())


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def pick(samples: Samples, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    return found[0] if len(found) == 1 else None


async def until(what: str, probe: Callable[[], Awaitable[bool]], within: float) -> None:
    """Poll `probe` until true; fail naming `what` after `within` seconds (scaled in the VM)."""
    deadline = time.monotonic() + within * SLOW
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.25)
    pytest.fail(f"timed out after {within * SLOW:.0f}s: {what}")


@pytest.fixture
async def lab(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Lab]:
    lab = Lab(
        tmp_path / "lab",
        backend=request.param,
        # Shortened thresholds: keepalives every second both ways, so three silent
        # seconds are "down" on either side, long before the 275 s handshake limit.
        hub_args=(
            "--allowed-ips",
            "100.96.0.0/24",
            "--persistent-keepalive",
            "1",
            "--health-keepalive",
            "1",
            "--health-interval",
            "0.5",
            "--metrics-address",
            "198.18.0.1:9799",
        ),
        spoke_env={
            "WG_PERSISTENT_KEEPALIVE": "1",
            "WG_HEALTH_KEEPALIVE": "1",
            "WG_HEALTH_INTERVAL": "0.5",
            "WG_METRICS_ADDRESS": "{ip}:9799",
            # WireGuard over the internet side (eth1); the API over the node network.
            "WG_ENDPOINT": "{public}",
        },
    )
    try:
        yield lab
    finally:
        await lab.close_kernels()
        lab.clean()


def promtool_check(text: str) -> str:
    """promtool's complaints about an exposition ('' when it passes)."""
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, text=True, capture_output=True, check=False
    )
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr


def set_wireguard_link(spoke: Node, up: bool) -> None:
    """`ip link set eth1 down|up` in the spoke's namespace: eth1 is the spoke's leg on the
    internet bridge, which only its WireGuard traffic uses."""
    subprocess.run(
        ["ip", "-n", spoke.ns, "link", "set", "eth1", "up" if up else "down"], check=True
    )


@pytest.mark.parametrize(
    "lab",
    [
        pytest.param("kernel", marks=pytest.mark.kernel, id="kernel"),
        pytest.param("userspace", marks=pytest.mark.userspace, id="userspace"),
    ],
    indirect=True,
)
async def test_metrics_events_conditions_and_status_follow_a_cut_and_restored_spoke(
    lab: Lab,
) -> None:
    await skip_unless(lab.backend)
    lab.make_bridge()
    lab.make_internet()
    lab.start_api(in_process=True)
    api = lab.api
    assert api is not None
    hub = Node("hub", "hub", 1, site="both")
    lab.place(hub, api_address=f"{UNDERLAY}.254")
    lab.start_process(hub)
    spokes = [Node(f"spoke-{i}", "spoke", 10 + i, site="both") for i in (1, 2)]
    for spoke in spokes:
        lab.place(spoke, api_address=f"{UNDERLAY}.254")
        lab.start_process(spoke)
    for spoke in spokes:
        await lab.wait_handshake(spoke, hub, within=60 * SLOW)
    assert await lab.backend_name(hub) == lab.backend
    cut, other = spokes

    def hub_state(node: str) -> str | None:
        samples = parse(scrape(hub))
        for state in ("up", "down", "unknown"):
            if pick(samples, "wgkube_peer_state", node=node, state=state) == 1:
                return state
        return None

    async def both_up() -> bool:
        return hub_state(cut.name) == "up" and hub_state(other.name) == "up"

    await until("both peers up on the hub", both_up, within=30)

    # Series carry Node names; the output parses and passes promtool.
    text = scrape(hub)
    samples = parse(text)
    for spoke in spokes:
        assert pick(samples, "wgkube_peer_info", node=spoke.name, public_key=lab.public_key(spoke))
    assert promtool_check(text) == ""
    spoke_samples = parse(scrape(cut))
    assert pick(spoke_samples, "wgkube_hub_state", hub=hub.name, state="up") == 1

    # Values move with traffic.
    rx_before = pick(samples, "wgkube_peer_receive_bytes_total", node=cut.name)
    assert rx_before is not None
    result = await lab.ping(cut, HUB_WG, count=5)
    assert result.received == 5, result.output
    rx_after = pick(parse(scrape(hub)), "wgkube_peer_receive_bytes_total", node=cut.name)
    assert rx_after is not None
    assert rx_after >= rx_before + 5 * 84

    async def condition(node: Node) -> str:
        body = api.get("nodes", node.name) or {}
        for cond in body.get("status", {}).get("conditions") or []:
            if cond["type"] == "WireGuardTunnel":
                return str(cond["status"])
        return ""

    async def true_on_cut() -> bool:
        return await condition(cut) == "True"

    await until("the spoke's WireGuardTunnel condition is True", true_on_cut, within=20)

    # Cut the tunnel of one spoke: down on the hub, an Event, the spoke's condition False.
    other_states: list[str | None] = []
    set_wireguard_link(cut, up=False)
    try:

        async def down_everywhere() -> bool:
            other_states.append(hub_state(other.name))
            reasons = {e.get("reason") for e in api.events(cut.name)}
            return (
                hub_state(cut.name) == "down"
                and "PeerDisconnected" in reasons
                and await condition(cut) == "False"
            )

        await until(
            "the cut spoke is down, has an Event and a False condition", down_everywhere, 30
        )

        async def status_shows_down() -> bool:
            table = await render_status(lab.kubeconfig)
            line = next(ln for ln in table.splitlines() if ln.startswith(cut.name + " "))
            return " down " in line and "False (HandshakeStale)" in line

        await until("wg-kube status shows the cut spoke down", status_shows_down, within=15)
    finally:
        set_wireguard_link(cut, up=True)

    async def up_again() -> bool:
        other_states.append(hub_state(other.name))
        reasons = [e.get("reason") for e in api.events(cut.name)]
        return (
            hub_state(cut.name) == "up"
            and "PeerConnected" in reasons
            and await condition(cut) == "True"
        )

    await until("the restored spoke is up again", up_again, within=30)
    assert set(other_states) == {"up"}, f"the other peer left up: {other_states}"

    # A removed peer's series are gone on the next scrape.
    lab.stop_process(other)
    api.patch_node(other.name, {"metadata": {"labels": {PREFIX + "peer": None}}})
    key = lab.public_key(other)

    async def series_gone() -> bool:
        return f'public_key="{key}"' not in scrape(hub)

    await until("the removed peer's series vanish", series_gone, within=20)
    lab.check_alive()

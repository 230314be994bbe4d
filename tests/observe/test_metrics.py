"""The /metrics collector over the memory kernel: one dump per scrape, Prometheus format."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.builders import ep, nets, pub
from wgkube.desired.health import Thresholds
from wgkube.diff.model import CreateLink, Operation, RemovePeer, UpsertPeer
from wgkube.domain.keys import PublicKey
from wgkube.kernel.memory import MemoryKernel
from wgkube.observe.book import HealthBook
from wgkube.observe.metrics import Metrics

NOW = 1_800_000_000.0
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def series(text: str) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(all_series: Series, name: str, **labels: str) -> float:
    want = set(labels.items())
    found = [v for (n, ls), v in all_series.items() if n == name and want <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


class CountingKernel(MemoryKernel):
    def __init__(self) -> None:
        super().__init__()
        self.dumps = 0
        self.observes = 0

    async def peers(self, ifname: str) -> Mapping[PublicKey, object] | None:  # type: ignore[override]
        self.dumps += 1
        return await super().peers(ifname)


async def hub_device(kernel: MemoryKernel, n: int) -> None:
    ops: list[Operation] = [CreateLink("wg0")]
    for i in range(n):
        ops.append(
            UpsertPeer(pub(i), ep(f"192.0.2.{i + 1}:51820"), nets(f"100.96.0.{i + 2}/32"), new=True)
        )
    await kernel.apply("wg0", ops)


def metrics_for(kernel: MemoryKernel, clock: list[float]) -> Metrics:
    return Metrics(
        kernel=kernel,
        interface="wg0",
        role="hub",
        book=HealthBook(Thresholds(handshake_limit=60)),
        names=lambda: {pub(i): f"spoke-{i}" for i in range(3)},
        reasons=lambda: {"PeerConflict": 2},
        clock=lambda: clock[0],
    )


async def test_per_peer_series_carry_the_node_name_and_follow_the_kernel() -> None:
    kernel = CountingKernel()
    await hub_device(kernel, 3)
    kernel.record_traffic("wg0", pub(0), handshake=NOW - 5, rx_bytes=100, tx_bytes=200)
    clock = [NOW]
    metrics = metrics_for(kernel, clock)

    first = series((await metrics.scrape()).decode())
    assert kernel.dumps == 1
    assert value(first, "wgkube_peer_info", node="spoke-0") == 1
    info = [ls for (n, ls) in first if n == "wgkube_peer_info" and ("node", "spoke-1") in ls]
    assert dict(info[0])["endpoint"] == "192.0.2.2:51820"
    assert dict(info[0])["allowed_ips"] == "100.96.0.3/32"
    assert dict(info[0])["public_key"] == pub(1).b64
    assert value(first, "wgkube_peer_receive_bytes_total", node="spoke-0") == 100
    assert value(first, "wgkube_peer_transmit_bytes_total", node="spoke-0") == 200
    assert value(first, "wgkube_peer_last_handshake_timestamp_seconds", node="spoke-0") == NOW - 5
    assert value(first, "wgkube_peer_last_handshake_timestamp_seconds", node="spoke-1") == 0
    assert value(first, "wgkube_peer_state", node="spoke-0", state="up") == 1
    assert value(first, "wgkube_peer_state", node="spoke-0", state="down") == 0
    assert value(first, "wgkube_peer_state", node="spoke-1", state="unknown") == 1
    assert value(first, "wgkube_peers", state="up") == 1
    assert value(first, "wgkube_peers", state="unknown") == 2
    assert value(first, "wgkube_rejected_peers", reason="PeerConflict") == 2
    assert value(first, "wgkube_rejected_peers", reason="InvalidPeerConfig") == 0

    # Traffic moves the counters; the handshake ages past the (shortened) limit: down.
    kernel.record_traffic("wg0", pub(0), handshake=NOW - 5, rx_bytes=1100, tx_bytes=1200)
    clock[0] = NOW + 100
    second = series((await metrics.scrape()).decode())
    assert kernel.dumps == 2
    assert value(second, "wgkube_peer_receive_bytes_total", node="spoke-0") == 1100
    assert value(second, "wgkube_peer_state", node="spoke-0", state="down") == 1
    assert value(second, "wgkube_peers", state="down") == 1

    # A removed peer's series are gone on the next scrape.
    await kernel.apply("wg0", [RemovePeer(pub(2))])
    third = series((await metrics.scrape()).decode())
    assert not [k for k in third if ("public_key", pub(2).b64) in k[1]]
    assert [k for k in third if ("public_key", pub(1).b64) in k[1]]


async def test_reconciles_and_kernel_operations_are_counted_by_result_and_kind() -> None:
    kernel = MemoryKernel()
    metrics = metrics_for(kernel, [NOW])
    metrics.reconcile.reconciled(0.02, [CreateLink("wg0"), UpsertPeer(pub(1), None, ())])
    metrics.reconcile.reconciled(0.01, [])
    metrics.reconcile.reconciled(0.5, None)
    out = series((await metrics.scrape()).decode())
    assert value(out, "wgkube_reconciles_total", result="success") == 2
    assert value(out, "wgkube_reconciles_total", result="failure") == 1
    assert value(out, "wgkube_reconcile_duration_seconds_count") == 2
    assert value(out, "wgkube_kernel_operations_total", operation="upsert_peer") == 1
    assert value(out, "wgkube_kernel_operations_total", operation="create_link") == 1
    assert value(out, "wgkube_kernel_operations_total", operation="remove_route") == 0
    assert value(out, "wgkube_interface_up") == 0  # no device yet


async def test_the_spoke_reports_its_hub_by_node_name() -> None:
    kernel = MemoryKernel()
    await kernel.apply("wg0", [CreateLink("wg0"), UpsertPeer(pub("hub"), None, (), new=True)])
    kernel.record_traffic("wg0", pub("hub"), handshake=NOW - 1, rx_bytes=7, tx_bytes=9)
    metrics = Metrics(
        kernel=kernel,
        interface="wg0",
        role="spoke",
        book=HealthBook(Thresholds()),
        names=lambda: {pub("hub"): "hub-1"},
        clock=lambda: NOW,
    )
    out = series((await metrics.scrape()).decode())
    assert value(out, "wgkube_hub_state", hub="hub-1", state="up") == 1
    assert value(out, "wgkube_hub_last_handshake_timestamp_seconds", hub="hub-1") == NOW - 1
    assert value(out, "wgkube_hub_receive_bytes_total", hub="hub-1") == 7
    assert value(out, "wgkube_hub_transmit_bytes_total", hub="hub-1") == 9
    assert not [k for k in out if k[0].startswith("wgkube_peer_")]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_output_passes_promtool_check_metrics() -> None:
    async def scrape() -> bytes:
        kernel = MemoryKernel()
        await hub_device(kernel, 3)
        metrics = metrics_for(kernel, [NOW])
        metrics.reconcile.reconciled(0.02, [])
        return await metrics.scrape()

    body = asyncio.run(scrape())
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


async def test_a_large_device_is_rendered_in_pieces_that_join_into_the_one_rendering() -> None:
    """Families of more than PIECE_SAMPLES samples go out a piece at a time (the served
    response is streamed): joined, they are byte for byte prometheus-client's rendering
    of the whole registry, and promtool takes them."""
    from prometheus_client import generate_latest

    from tests.observe.test_observe_system import promtool_check
    from wgkube.observe.metrics import PIECE_SAMPLES

    peers = PIECE_SAMPLES + PIECE_SAMPLES // 2
    kernel = MemoryKernel()
    ops: list[Operation] = [CreateLink("wg0")]
    ops += [
        UpsertPeer(pub(i), None, nets(f"100.{64 + i // 256}.{i % 256}.1/32"), new=True)
        for i in range(peers)
    ]
    await kernel.apply("wg0", ops)
    metrics = metrics_for(kernel, [NOW])
    async with contextlib.aclosing(metrics.scrape_chunks()) as chunks:
        pieces = [chunk async for chunk in chunks]
    joined = b"".join(pieces)
    assert len(pieces) > 8 + 4, "the per-peer families came in more than one piece each"
    metrics.device.snapshot = await metrics.dump()
    assert joined == generate_latest(metrics.registry)
    assert joined.count(b"# TYPE wgkube_peer_state gauge") == 1
    assert value(series(joined.decode()), "wgkube_peer_info", node="spoke-1") == 1
    assert len([s for s in series(joined.decode()) if s[0] == "wgkube_peer_state"]) == 3 * peers
    assert promtool_check(joined.decode()) == ""

"""/metrics: process counters plus one collector that reads the device at scrape time.

Per-peer series are never stored: each scrape takes one dump of the device through the
kernel port and renders it, so a removed peer's series are simply absent from the next
scrape, and nothing grows with the history of peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter as Tally
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wgkube.desired.health import STATES, PeerState, Thresholds, count
from wgkube.diff.model import ObservedPeer, Operation
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import format_networks
from wgkube.kernel.port import Kernel
from wgkube.observe.book import HealthBook

log = logging.getLogger("wgkube.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RESULTS = ("success", "failure")
OPERATIONS = (
    "CreateLink",
    "SetMtu",
    "SetUp",
    "AddAddress",
    "RemoveAddress",
    "ConfigureDevice",
    "UpsertPeer",
    "RemovePeer",
    "AddRoute",
    "RemoveRoute",
)

Names = Callable[[], Mapping[PublicKey, str]]
"""Public key -> Kubernetes Node name, as the process knows it now."""
Reasons = Callable[[], Mapping[str, int]]
"""Rejection reason -> number of Nodes rejected for it now."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class ReconcileMetrics:
    """Counters the process keeps; the Reconciler's observer (`reconciled`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "wgkube_reconciles",
            "Reconciles of the device (read the kernel, diff, apply), by result.",
            ["result"],
            registry=registry,
        )
        self.duration = Histogram(
            "wgkube_reconcile_duration_seconds",
            "Duration of successful reconciles, seconds.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.operations = Counter(
            "wgkube_kernel_operations",
            "Kernel operations applied by reconciles, by kind.",
            ["operation"],
            registry=registry,
        )
        self.last_success = 0.0
        # Zero-valued series from the start, so rate() and alerts see the first event.
        for result in RESULTS:
            self.reconciles.labels(result=result)
        for op in OPERATIONS:
            self.operations.labels(operation=_snake(op))

    def reconciled(self, seconds: float, ops: Sequence[Operation] | None) -> None:
        if ops is None:
            self.reconciles.labels(result="failure").inc()
            return
        self.reconciles.labels(result="success").inc()
        self.duration.observe(seconds)
        self.last_success = time.time()
        for kind, n in Tally(type(op).__name__ for op in ops).items():
            self.operations.labels(operation=_snake(kind)).inc(n)


@dataclass
class Snapshot:
    """One dump of the device and what it means at one instant."""

    peers: Mapping[PublicKey, ObservedPeer] | None
    states: Mapping[PublicKey, PeerState]
    names: Mapping[PublicKey, str]
    now: float
    interface: str = ""
    """The device dumped (a spoke with several hubs: the active hub's)."""


@dataclass(eq=False)  # registries key collectors by identity
class DeviceCollector(Collector):
    """Renders the snapshot `Metrics.scrape` has just taken; reads, never decides."""

    interface: str
    role: Literal["hub", "spoke"]
    reasons: Reasons | None = None
    last_success: Callable[[], float] = lambda: 0.0
    snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        peers = snap.peers or {}
        if self.role == "hub":
            yield from self._hub(snap, peers)
        else:
            yield from self._spoke(snap, peers)
        yield GaugeMetricFamily(
            "wgkube_interface_up",
            "1 when the WireGuard interface exists.",
            value=0 if snap.peers is None else 1,
        )
        success = GaugeMetricFamily(
            "wgkube_last_reconcile_success_timestamp_seconds",
            "When the last reconcile succeeded, seconds since the epoch; 0 = never.",
        )
        success.add_metric([], self.last_success())
        yield success

    def _hub(self, snap: Snapshot, peers: Mapping[PublicKey, ObservedPeer]) -> Iterator[Metric]:
        # One family built at a time, each dropped once rendered (Metrics.scrape_chunks):
        # at 10,000 peers the five families together were ~70,000 samples (~40 MB).
        per_peer = ["interface", "node", "public_key"]
        ordered = sorted(peers.items(), key=lambda kv: kv[0].b64)
        interface = snap.interface or self.interface
        rows = [([interface, snap.names.get(key, ""), key.b64], peer) for key, peer in ordered]
        del ordered
        info = GaugeMetricFamily(
            "wgkube_peer_info",
            "One per peer of the device (always 1), with its configuration.",
            labels=[*per_peer, "endpoint", "allowed_ips"],
        )
        for labels, peer in rows:
            endpoint = str(peer.endpoint) if peer.endpoint else ""
            allowed = format_networks(sorted(peer.allowed_ips, key=str))
            info.add_metric([*labels, endpoint, allowed], 1)
        yield info
        del info
        handshake = GaugeMetricFamily(
            "wgkube_peer_last_handshake_timestamp_seconds",
            "Last completed handshake with the peer, seconds since the epoch; 0 = never.",
            labels=per_peer,
        )
        for labels, peer in rows:
            handshake.add_metric(labels, peer.last_handshake)
        yield handshake
        del handshake
        rx = CounterMetricFamily(
            "wgkube_peer_receive_bytes", "Bytes received from the peer.", labels=per_peer
        )
        for labels, peer in rows:
            rx.add_metric(labels, peer.rx_bytes)
        yield rx
        del rx
        tx = CounterMetricFamily(
            "wgkube_peer_transmit_bytes", "Bytes sent to the peer.", labels=per_peer
        )
        for labels, peer in rows:
            tx.add_metric(labels, peer.tx_bytes)
        yield tx
        del tx
        state = GaugeMetricFamily(
            "wgkube_peer_state",
            "1 for the peer's current state (up, down, unknown), 0 for the others.",
            labels=[*per_peer, "state"],
        )
        for labels, peer in rows:
            current = snap.states.get(peer.public_key, PeerState.UNKNOWN)
            for s in STATES:
                state.add_metric([*labels, s.value], 1 if s is current else 0)
        yield state
        del state
        totals = GaugeMetricFamily(
            "wgkube_peers", "Peers of the device by state.", labels=["state"]
        )
        for s, n in count(snap.states.values()).items():
            totals.add_metric([s.value], n)
        yield totals
        rejected = GaugeMetricFamily(
            "wgkube_rejected_peers",
            "Peer Nodes left out of the device, by reason (see their Warning Events).",
            labels=["reason"],
        )
        reasons = dict.fromkeys(("InvalidPeerConfig", "PeerConflict"), 0)
        reasons.update(self.reasons() if self.reasons else {})
        for reason, n in sorted(reasons.items()):
            rejected.add_metric([reason], n)
        yield rejected

    def _spoke(self, snap: Snapshot, peers: Mapping[PublicKey, ObservedPeer]) -> Iterator[Metric]:
        labels = ["interface", "hub", "public_key"]
        state = GaugeMetricFamily(
            "wgkube_hub_state",
            "1 for the tunnel's current state (up, down, unknown), 0 for the others.",
            labels=[*labels, "state"],
        )
        handshake = GaugeMetricFamily(
            "wgkube_hub_last_handshake_timestamp_seconds",
            "Last completed handshake with the hub, seconds since the epoch; 0 = never.",
            labels=labels,
        )
        rx = CounterMetricFamily(
            "wgkube_hub_receive_bytes", "Bytes received from the hub.", labels=labels
        )
        tx = CounterMetricFamily(
            "wgkube_hub_transmit_bytes", "Bytes sent to the hub.", labels=labels
        )
        for key, peer in sorted(peers.items(), key=lambda kv: kv[0].b64):
            values = [snap.interface or self.interface, snap.names.get(key, ""), key.b64]
            current = snap.states.get(key, PeerState.UNKNOWN)
            for s in STATES:
                state.add_metric([*values, s.value], 1 if s is current else 0)
            handshake.add_metric(values, peer.last_handshake)
            rx.add_metric(values, peer.rx_bytes)
            tx.add_metric(values, peer.tx_bytes)
        yield from (state, handshake, rx, tx)


@dataclass
class Metrics:
    """What one process exposes; `scrape()` is one device dump and one rendering."""

    kernel: Kernel
    interface: str
    role: Literal["hub", "spoke"]
    book: HealthBook
    names: Names
    reasons: Reasons | None = None
    clock: Callable[[], float] = time.time
    interface_of: Callable[[], str] | None = None
    """The device to dump now, when it moves (a spoke with several hubs: the active
    hub's interface); `interface` otherwise."""
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=False)
    )
    reconcile: ReconcileMetrics = field(init=False)
    device: DeviceCollector = field(init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.reconcile = ReconcileMetrics(self.registry)
        self.device = DeviceCollector(
            self.interface,
            self.role,
            self.reasons,
            last_success=lambda: self.reconcile.last_success,
        )
        self.registry.register(self.device)

    async def dump(self) -> Snapshot:
        """One read of the device and the states it gives now (also the monitor's input)."""
        interface = self.interface_of() if self.interface_of else self.interface
        peers = await self.kernel.peers(interface)
        now = self.clock()
        states = self.book.update(peers or {}, now)
        return Snapshot(peers, states, dict(self.names()), now, interface)

    async def scrape(self) -> bytes:
        """The whole exposition of one snapshot."""
        async with contextlib.aclosing(self.scrape_chunks()) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async def scrape_chunks(self) -> AsyncGenerator[bytes, None]:
        """The exposition of one snapshot, a metric family at a time: prometheus-client's
        `generate_latest` renders each family on its own (the same bytes as the whole
        registry at once), so only one family's samples and text are held, and the loop
        gets a turn between families."""
        async with self._lock:  # the collector renders one snapshot at a time
            self.device.snapshot = await self.dump()
            try:
                for family in self.registry.collect():
                    for piece in _pieces(family):
                        yield piece
                        await asyncio.sleep(0)
            finally:
                self.device.snapshot = None


PIECE_SAMPLES = 2000
"""Samples of one family rendered at once: a family of 30,000 (a state per peer at 10,000)
was ~14 MB of text, held up to three times (lines, joined, encoded)."""


def _pieces(family: Metric) -> Iterator[bytes]:
    """`generate_latest` of one family, PIECE_SAMPLES samples at a time: every piece but
    the first without its `# HELP` and `# TYPE` lines, so the pieces join into the one
    rendering. A family with OpenMetrics extra samples (`_created`...), which the library
    renders as a block of their own after each call, is rendered whole."""
    samples = family.samples
    extra = tuple(family.name + suffix for suffix in ("_created", "_gsum", "_gcount"))
    if len(samples) <= PIECE_SAMPLES or any(s.name in extra for s in samples):
        yield generate_latest(_One(family))
        return
    for start in range(0, len(samples), PIECE_SAMPLES):
        piece = Metric(family.name, family.documentation, family.type, family.unit)
        piece.samples = samples[start : start + PIECE_SAMPLES]
        text = generate_latest(_One(piece))
        if start:
            help_line, type_line, text = text.split(b"\n", 2)
            if not (help_line.startswith(b"# HELP ") and type_line.startswith(b"# TYPE ")):
                raise RuntimeError(f"unexpected rendering of {family.name}: {help_line!r}")
        yield text


@dataclass(frozen=True)
class _One:
    """One metric family as a collector, for `generate_latest`."""

    family: Metric

    def collect(self) -> Iterator[Metric]:
        yield self.family


def thresholds(handshake_limit: float, keepalive: float) -> Thresholds:
    """The settings' thresholds; the settle window never outlasts the handshake limit."""
    return Thresholds(
        handshake_limit=handshake_limit,
        settle=min(Thresholds().settle, handshake_limit),
        keepalive=keepalive,
    )


def split_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or a bare IPv6 with a port after the last colon."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def serve_metrics(address: str, metrics: Metrics, stop: asyncio.Event) -> None:
    """GET /metrics on `address` until `stop`."""
    host, port = split_address(address)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
        async with contextlib.aclosing(metrics.scrape_chunks()) as chunks:
            async for chunk in chunks:
                if not response.prepared:
                    await response.prepare(request)  # after the dump: a failed one is a 500
                await response.write(chunk)
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "127.0.0.1", port)
    try:
        await site.start()
    except OSError as exc:
        # Metrics are not worth stopping the tunnel for: say so and carry on without them.
        log.error("cannot serve metrics on %s: %s", address, exc)
        await runner.cleanup()
        await stop.wait()
        return
    log.info("metrics on http://%s/metrics", address)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

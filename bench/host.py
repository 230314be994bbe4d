"""The host suite: userspace WireGuard (wireguard-go) and real `wg-kube hub` processes.

Runs inside a throw-away network namespace made by bench.run (`ip netns exec NS python
-m bench.host --json OUT`): the API emulator listens on that namespace's 127.0.0.1, and
the hub, wireguard-go, the baseline's devices and every route stay inside it.

Per peer count N, with a fresh API emulator:
  burst        the hub runs, ready with no peers; N Nodes are created as fast as the API
               takes them -> time until the device holds N peers and routes
  incremental  one peer's allowed-ips annotation changes -> time until its new route is
               in the kernel (the product writes routes after the peer); the K of the
               "applying K change(s)" log line
  restart      the hub stops and starts again with N peers in place -> time to /readyz
               ready; kernel writes made by the new process (the K it logged)
  converge     a fresh device, N Nodes already in the API: the hub process starts ->
               time until the device holds N peers and routes; vs the baseline
  memory       VmHWM of every hub process that handled N peers
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    HUB_ADDRESS,
    MOVED_BASE,
    PREFIX,
    ApiProcess,
    HubProcess,
    KernelReads,
    Peer,
    RouteMonitor,
    RouteProbe,
    baseline_apply,
    baseline_converge,
    delete_link,
    hub_node,
    idle_python_kib,
    log,
    make_peers,
    median,
    peer_allowed,
    peer_node,
    peers_changed,
    route_count,
    run,
    start_wireguard_go,
    summary,
    time_when,
    unique_ifname,
    wait_device,
    wg_allowed_ips,
    wg_dump,
    wg_peer_count,
    write_key,
)

DEFAULT_DEBOUNCE = 0.2
"""The product's default (--debounce); every hub here runs with the default."""
READ_CHANGES = 5
"""Isolated changes whose kernel reads are counted (traced, after the timed samples)."""
METRICS_URL = "http://127.0.0.1:9799/metrics"
"""The hub's default --metrics-address: a scrape reads the device (the tracer's control)."""


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    incremental_samples: dict[int, int]
    converge_repeats: dict[int, int]
    baseline_repeats: int
    floor_repeats: int
    memory_sizes: tuple[int, ...]
    latency_size: int
    timeout_base: float = 45.0
    timeout_per_peer: float = 0.03
    incremental_span_s: float = 0.0
    """The pairs are spread over at least this long: more than the hub's kernel resync
    interval (60 s), so that changes are made while a resync reads 10,000 peers."""
    disruption: dict[str, Any] | None = None
    """Parameters of a host (userspace) disruption run; None: the VM does it."""

    def timeout(self, n: int) -> float:
        return self.timeout_base + self.timeout_per_peer * n


FULL = Plan(
    sizes=(100, 1000, 10000),
    incremental_samples={100: 40, 1000: 20, 10000: 20},
    converge_repeats={100: 3, 1000: 2, 10000: 1},
    baseline_repeats=3,
    floor_repeats=3,
    memory_sizes=(1000, 10000),
    latency_size=100,
    incremental_span_s=75.0,
)

QUICK = Plan(
    sizes=(20, 50, 100),
    incremental_samples={20: 7, 50: 5, 100: 5},
    converge_repeats={20: 1, 50: 1, 100: 1},
    baseline_repeats=1,
    floor_repeats=1,
    memory_sizes=(20, 50),
    latency_size=20,
    timeout_base=60.0,
    disruption={"peers": 20, "baseline_changes": 1, "recovery_cap": 25.0},
)


def error_record(exc: BaseException) -> dict[str, Any]:
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}


def guarded(what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failure becomes a record saying so, and the suite goes on."""
    try:
        return fn()
    except Exception as exc:
        log(f"{what}: FAILED: {exc}")
        traceback.print_exc(file=sys.stderr)
        return error_record(exc)


def hub_phase(hub: HubProcess) -> str:
    """How far a hub got, from its log (for the record when it times out)."""
    text = hub.log()
    if "reconciled:" in text and hub.applied()[1:]:
        return "applying peers"
    if "initial Node listing complete" in text:
        return "listed; reconciling"
    if "announced node" in text:
        return "announced; waiting for Kopf's initial Node listing"
    return "starting"


def wait_ready(hub: HubProcess, timeout: float) -> float:
    """Poll /readyz until ready; the perf_counter then."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        body = hub.readyz()
        if body and body.get("ready"):
            return now
        hub.check_alive()
        if now > deadline:
            raise TimeoutError(f"hub not ready after {timeout:.0f}s ({hub_phase(hub)})")
        time.sleep(0.02)


@dataclass
class SizeRun:
    """Everything measured at one peer count."""

    n: int
    plan: Plan
    work: Path
    api: ApiProcess
    peers: list[Peer] = field(default_factory=list)
    out: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def timeout(self) -> float:
        return self.plan.timeout(self.n)

    def nodes(self) -> list[dict[str, Any]]:
        return [peer_node(p, i) for i, p in enumerate(self.peers)]

    def create_baseline(self) -> float:
        """Seconds to create the N Nodes into a fresh emulator that no hub watches: the
        burst's baseline, which a slow hub cannot inflate."""
        api = ApiProcess(self.work).start()
        try:
            return api.create_nodes(self.nodes())
        finally:
            api.stop()

    def run(self) -> dict[str, Any]:
        n = self.n
        self.api.create_node(hub_node())
        self.peers = make_peers(n)
        hub = HubProcess(self.work, self.api, unique_ifname("wgbh"))
        self.out["create_baseline"] = guarded(
            f"N={n} creation baseline", lambda: {"create_s": self.create_baseline()}
        )
        try:
            self.out["burst"] = guarded(f"N={n} burst", lambda: self.burst(hub))
            if self.out["burst"].get("status") == "failed":
                reason = "not measured: the burst before it did not converge"
                self.out["incremental"] = {"status": "not measured", "error": reason}
                self.out["restart"] = {"status": "not measured", "error": reason}
            else:
                samples = self.plan.incremental_samples.get(n, 0)
                if samples:
                    self.out["incremental"] = guarded(
                        f"N={n} incremental", lambda: self.incremental(hub, samples)
                    )
                self.memory["burst hub (burst + incremental)"] = hub.memory_kib()
                self.out["restart"] = guarded(f"N={n} restart", lambda: self.restart(hub))
        finally:
            hub.stop()
            delete_link(hub.ifname)
        self.out["burst_floor"] = guarded(f"N={n} apply floor", self.apply_floor)
        self.out["converge"] = guarded(f"N={n} converge", self.converge)
        self.out["memory_kib"] = self.memory
        return self.out

    # -- burst -------------------------------------------------------------------------------
    def burst(self, hub: HubProcess) -> dict[str, Any]:
        n = self.n
        hub.start()
        wait_ready(hub, 60)
        reconciles_before = len(hub.applied())
        log(f"N={n} burst: creating {n} Nodes while the hub runs")
        started = time.perf_counter()
        create_s = self.api.create_nodes(self.nodes())
        try:
            done = wait_device(hub.ifname, n, timeout=self.timeout, alive=hub.check_alive)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} ({hub_phase(hub)})") from None
        ours = done - started
        writes = hub.applied()[reconciles_before:]
        log(f"N={n} burst: ours {ours:.2f}s (Nodes created in {create_s:.2f}s)")
        return {
            "ours_s": ours,
            "create_s": create_s,
            "reconciles_that_wrote": len(writes),
            "kernel_ops": sum(writes),
        }

    def apply_floor(self) -> dict[str, Any]:
        """`wg set` of all peers + `ip -batch` of all routes onto an existing, empty device."""
        pairs = [(p.key, p.allowed) for p in self.peers]
        runs = []
        for _ in range(self.plan.floor_repeats):
            ifname = unique_ifname("wgbf")
            try:
                start_wireguard_go(ifname)
                run(["ip", "address", "add", HUB_ADDRESS, "dev", ifname])
                run(["ip", "link", "set", ifname, "up"])
                started = time.perf_counter()
                baseline_apply(ifname, pairs, address=None)
                runs.append(time.perf_counter() - started)
                assert wg_peer_count(ifname) == self.n
                assert route_count(ifname) == self.n
            finally:
                delete_link(ifname)
        log(f"N={self.n} apply floor (wg set + ip -batch): {median(runs):.3f}s")
        return {"floor_s": median(runs), "runs_s": runs}

    # -- incremental -------------------------------------------------------------------------
    def incremental(self, hub: HubProcess, samples: int) -> dict[str, Any]:
        """Pairs of changes: A after a quiet debounce interval (isolated: the leading edge
        applies it at once), B a few ms after A (it waits out the debounce). Kernel
        writes are counted from outside: rtnetlink route events and a `wg show dump` diff.
        """
        if 2 * samples + READ_CHANGES > self.n:
            raise ValueError(
                "each sample moves two different peers, each traced change one more: "
                f"2 * samples + {READ_CHANGES} <= N"
            )
        probe = RouteProbe()
        monitor = RouteMonitor(self.work)
        try:
            index = probe.index(hub.ifname)
            isolated: list[float] = []
            following: list[float] = []
            ops: list[float] = []
            logged: list[int] = []
            moved: dict[str, str] = {}
            time.sleep(1.0)  # let the burst's last reconcile finish
            started = time.perf_counter()
            for j in range(samples):
                a, b = self.peers[2 * j], self.peers[2 * j + 1]
                new_a, new_b = peer_allowed(2 * j, MOVED_BASE), peer_allowed(2 * j + 1, MOVED_BASE)
                before_dump = wg_dump(hub.ifname)
                mark = monitor.mark()
                before_log = len(hub.applied())
                t_a = self._patch(a, new_a)
                t_b = self._patch(b, new_b)
                done = self._wait_routes(probe, index, {new_a: t_a, new_b: t_b})
                isolated.append(done[new_a])
                following.append(done[new_b])
                for old in (a.allowed, b.allowed):
                    self._wait_gone(probe, index, old)
                # A late write shows; the next A is isolated; the pairs span a resync.
                left = self.plan.incremental_span_s - (time.perf_counter() - started)
                time.sleep(max(DEFAULT_DEBOUNCE + 0.1, left / (samples - j)))
                routes = monitor.events(hub.ifname, mark)
                peers = peers_changed(before_dump, wg_dump(hub.ifname))
                ops.append((routes + peers) / 2)
                logged.append(sum(hub.applied()[before_log:]))
                moved[a.key], moved[b.key] = new_a, new_b
            offset = 2 * samples
            reads = self._reads(hub, probe, index, offset, self.peers[offset:][:READ_CHANGES])
            moved.update(reads.pop("moved"))
            hub.check_alive()
            kernel = wg_allowed_ips(hub.ifname)
            verified = all(kernel.get(key) == new for key, new in moved.items())
        finally:
            monitor.close()
            probe.close()
        iso, fol = summary(isolated), summary(following)
        log(
            f"N={self.n} incremental: isolated p50 {iso['p50'] * 1000:.0f} ms, following "
            f"p50 {fol['p50'] * 1000:.0f} ms, kernel writes per change {sorted(set(ops))}, "
            f"kernel reads per change {reads['kernel_reads_per_change']}"
        )
        return {
            "samples": samples,
            "span_s": time.perf_counter() - started,
            "latency_s": fol,
            "latencies_s": following,
            "isolated_latency_s": iso,
            "isolated_latencies_s": isolated,
            "kernel_ops_per_change": ops,
            "kernel_ops_median": median(ops),
            "kernel_ops_max": max(ops),
            "logged_ops_per_pair": logged,
            **reads,
            "debounce_s": DEFAULT_DEBOUNCE,
            "verified_in_wireguard": verified,
        }

    def _reads(
        self, hub: HubProcess, probe: RouteProbe, index: int, offset: int, peers: list[Peer]
    ) -> dict[str, Any]:
        """Kernel reads per isolated change, seen from outside (KernelReads: the hub's
        netlink dumps and UAPI `get=1`), from each patch to 0.2 s after its route is in;
        each change after a quiet debounce interval. The control: a /metrics scrape after
        them reads the device, so a tracer that sees no read there makes the count void."""
        if len(peers) < READ_CHANGES:
            raise ValueError(f"{READ_CHANGES} more peers than the timed samples are needed")
        windows: list[tuple[float, float]] = []
        moved: dict[str, str] = {}
        tracer = KernelReads(self.work, hub.pid)
        try:
            for j, peer in enumerate(peers):
                new = peer_allowed(offset + j, MOVED_BASE)
                since = time.time()
                self._wait_routes(probe, index, {new: self._patch(peer, new)})
                windows.append((since, time.time() + 0.2))
                self._wait_gone(probe, index, peer.allowed)
                time.sleep(0.2 + DEFAULT_DEBOUNCE + 0.1)  # the window, then quiet
                moved[peer.key] = new
            since = time.time()
            with urllib.request.urlopen(METRICS_URL, timeout=30) as answer:
                answer.read()
            control = (since, time.time())
        finally:
            tracer.close()  # detached and flushed before its log is read
        counts = [tracer.between(*window) for window in windows]
        seen = tracer.between(*control)
        if seen < 1:
            raise RuntimeError(
                f"the tracer saw no kernel read in a /metrics scrape ({tracer.path}): "
                "the reads per change cannot be counted"
            )
        return {
            "kernel_reads_per_change": counts,
            "kernel_reads_median": median(counts),
            "kernel_reads_max": max(counts),
            "kernel_reads_in_a_scrape": seen,
            "moved": moved,
        }

    def _patch(self, peer: Peer, new: str) -> float:
        started = time.perf_counter()
        self.api.patch_node(peer.name, {"metadata": {"annotations": {PREFIX + "allowed-ips": new}}})
        return started

    def _wait_gone(self, probe: RouteProbe, index: int, old: str) -> None:
        address = old.split("/")[0]
        time_when(
            lambda: not probe.via(address, index),
            timeout=self.timeout,
            what=f"old route {old} removed",
        )

    def _wait_routes(
        self, probe: RouteProbe, index: int, started: dict[str, float]
    ) -> dict[str, float]:
        """Seconds from each patch to its new route in the kernel (polled every ms)."""
        done: dict[str, float] = {}
        deadline = time.perf_counter() + self.timeout
        while len(done) < len(started):
            now = time.perf_counter()
            for new, t0 in started.items():
                if new not in done and probe.via(new.split("/")[0], index):
                    done[new] = now - t0
            if now > deadline:
                raise TimeoutError(f"routes {sorted(set(started) - set(done))} not in")
            time.sleep(0.001)
        return done

    # -- restart -----------------------------------------------------------------------------
    def restart(self, hub: HubProcess) -> dict[str, Any]:
        """Stop the hub, start it again: time to /readyz ready, and every kernel write it
        made (route events and a dump diff, from outside), watched 3 s past ready."""
        hub.stop(only_hub=True)
        assert wg_peer_count(hub.ifname) == self.n, "the device lost peers across the stop"
        floor = self.restart_floor(hub.ifname)
        monitor = RouteMonitor(self.work)
        try:
            before = wg_dump(hub.ifname)
            mark = monitor.mark()
            started = hub.start()
            try:
                ready = wait_ready(hub, self.timeout)
            except TimeoutError as exc:
                self.memory["restarted hub (timed out)"] = hub.memory_kib()
                raise TimeoutError(
                    f"{exc}; kernel ops logged meanwhile: {sum(hub.applied())}"
                ) from None
            time.sleep(3.0)  # a late write would have landed by now
            routes = monitor.events(hub.ifname, mark)
            peers = peers_changed(before, wg_dump(hub.ifname))
        finally:
            monitor.close()
        writes = hub.applied()
        self.memory["restarted hub"] = hub.memory_kib()
        log(
            f"N={self.n} restart: ready in {ready - started:.2f}s (floor {floor:.2f}s), kernel "
            f"writes seen {routes + peers} (logged {sum(writes)})"
        )
        return {
            "ready_s": ready - started,
            "floor_s": floor,
            "ratio": (ready - started) / floor,
            "kernel_ops": routes + peers,
            "route_events": routes,
            "peers_changed": peers,
            "logged_ops": sum(writes),
            "reconciles_that_wrote": len(writes),
            "peers_after": wg_peer_count(hub.ifname),
        }

    def restart_floor(self, ifname: str) -> float:
        """What a restart must do at least: start a Python process, LIST the peer Nodes,
        read the device (`wg show dump`) and its routes once."""
        started = time.perf_counter()
        run([sys.executable, "-c", "import wgkube.operator.main"])
        self.api.list_peer_nodes()
        wg_dump(ifname)
        route_count(ifname)
        return time.perf_counter() - started

    # -- converge from Nodes already in the API --------------------------------------------
    def converge(self) -> dict[str, Any]:
        n = self.n
        key = write_key(self.work / "baseline.key")
        baseline: list[float] = []
        ours: list[float] = []
        failures: list[dict[str, Any]] = []
        repeats = self.plan.converge_repeats.get(n, 1)
        for i in range(max(repeats, self.plan.baseline_repeats)):
            if i < self.plan.baseline_repeats:
                ifname = unique_ifname("wgbb")
                try:
                    baseline.append(baseline_converge(self.api, ifname, key, 51900))
                    assert wg_peer_count(ifname) == n
                    assert route_count(ifname) == n
                finally:
                    delete_link(ifname)
            if i < repeats:
                hub = HubProcess(self.work, self.api, unique_ifname("wgbc"))
                try:
                    started = hub.start()
                    done = wait_device(hub.ifname, n, timeout=self.timeout, alive=hub.check_alive)
                    ours.append(done - started)
                    self.memory[f"converging hub #{i + 1}"] = hub.memory_kib()
                except TimeoutError as exc:
                    self.memory[f"converging hub #{i + 1} (timed out)"] = hub.memory_kib()
                    failures.append(
                        {
                            "timed_out_after_s": self.timeout,
                            "peers_seen": wg_peer_count(hub.ifname),
                            "routes_seen": route_count(hub.ifname),
                            "phase": hub_phase(hub),
                            "error": str(exc),
                        }
                    )
                    log(f"N={n} converge: TIMED OUT ({hub_phase(hub)})")
                    break  # one timeout at this N is enough evidence; keep within budget
                finally:
                    hub.stop()
                    delete_link(hub.ifname)
        result: dict[str, Any] = {
            "baseline_s": median(baseline),
            "baseline_runs_s": baseline,
            "ours_runs_s": ours,
        }
        if failures:
            result["status"] = "timed out"
            result["timeouts"] = failures
            result["ours_s"] = None
            result["ratio_at_least"] = self.timeout / median(baseline)
        else:
            result["ours_s"] = median(ours)
            result["ratio"] = median(ours) / median(baseline)
        log(
            f"N={n} converge: baseline {median(baseline):.2f}s, ours "
            + (f"{median(ours):.2f}s" if not failures else f"> {self.timeout:.0f}s (timed out)")
        )
        return result


def run_suite(plan: Plan, work: Path) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    for n in plan.sizes:
        log(f"=== N={n} ===")
        api = ApiProcess(work).start()
        try:
            sizes[str(n)] = SizeRun(n, plan, work, api).run()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            sizes[str(n)] = error_record(exc)
        finally:
            api.stop()
    result: dict[str, Any] = {
        "idle_python_kib": idle_python_kib(),
        "sizes": sizes,
        "debounce_s": DEFAULT_DEBOUNCE,
        "latency_n": plan.latency_size,
    }
    if plan.disruption is not None:
        from bench.vm_disruption import run_disruption

        log("=== disruption (host, userspace) ===")
        result["disruption"] = guarded(
            "disruption",
            lambda: run_disruption(backend="userspace", work=work, **plan.disruption or {}),
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="wgkube-bench-"))
    try:
        result = run_suite(QUICK if args.quick else FULL, work)
        result["workdir"] = str(work) if args.keep else None
        args.json.write_text(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: wg-kube against baselines measured in the same run; a table and a JSON file.

    .venv/bin/python -m bench.run [--quick] [--json bench/results.json] [--no-vm]

Where things run (decided for isolation on a shared machine):
  host suite   one throw-away network namespace (`ip netns`, name wgbench-<hex>) holds the
               API emulator (a `python -m wgkube.testing.apiserver` process on that
               namespace's 127.0.0.1), real `wg-kube hub --backend userspace` processes
               and their wireguard-go devices, and the baseline's devices; nothing is
               added to the host's own namespace. The namespace is deleted at the end,
               after any process still in it is killed.
  disruption   kernel WireGuard exists only in the test VM: one boot of tests/vm/run.sh
               (virtme-ng, TCG) runs bench/vm_disruption.py. With --quick there is no VM;
               the same scenario runs on the host with wireguard-go instead.
  spoke load   an API emulator in this process and one `wg-kube spoke` (memory backend):
               its requests counted from the emulator's log (bench/spoke_load.py).
  real API     the N-peer scenarios against kube-apiserver + etcd from `make controlplane`,
               with a wireguard-go hub, in a throw-away namespace of their own
               (bench/realapi.py); NOT MEASURED without the binaries.

Requires root (namespaces), wireguard-go, wireguard-tools, iproute2; the VM part also
qemu-system-x86 and linux-image-amd64. Absolute times on a shared 2-core machine are
noisy: compare the ratios, which are measured back to back in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import failover, realapi, scrape, spoke_load
from bench.common import json_in_netns, log, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEBOUNCE = 0.2
TARGET_RATIO = 1.5
TARGET_ISOLATED_S = 0.05
TARGET_P99_SLACK = 0.1
TARGET_LATENCY_SLACK = 0.05
TARGET_MEMORY_MB = 150.0
HOST_BUDGET = {"full": 2700.0, "quick": 400.0}
VM_TIMEOUT = 1500
"""Seconds for the whole VM run: boot (23-40 s) plus both halves under TCG, which took
up to ~10 min on a loaded host; past it run.sh kills the VM."""
VM_PEERS = 200


# -- environment --------------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    vm_kernels = sorted(
        p.name for p in Path("/boot").glob("vmlinuz-*-amd64") if "-cloud-" not in p.name
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True
    ).stdout
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "vm_kernel": vm_kernels[-1] if vm_kernels else None,
        "backend_host": "userspace (wireguard-go over UAPI)",
        "backend_vm": "kernel WireGuard (netlink), TCG-emulated VM",
        "python": platform.python_version(),
        "versions": {
            "wg-kube": _version("wg-kube"),
            "kopf": _version("kopf"),
            "pyroute2": _version("pyroute2"),
            "kubernetes_asyncio": _version("kubernetes_asyncio"),
            "aiohttp": _version("aiohttp"),
            "kmock": _version("kmock"),
            "pydantic": _version("pydantic"),
            "wireguard-go": _first_line(["wireguard-go", "--version"]),
            "wireguard-tools": _first_line(["wg", "--version"]),
            "iproute2": _first_line(["ip", "-V"]),
            "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        },
        "git_commit": _first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "git_dirty_files": len(dirty.splitlines()),
        "loadavg_start": list(os.getloadavg()),
    }


# -- running the parts --------------------------------------------------------------------------


def run_host(quick: bool) -> dict[str, Any]:
    """bench.host inside a throw-away namespace; whatever is left in it is killed after."""
    budget = HOST_BUDGET["quick" if quick else "full"]
    args = ["--quick"] if quick else []
    return json_in_netns("wgbench", "bench.host", args, budget, "the host suite")


def run_vm() -> dict[str, Any]:
    """One VM boot (tests/vm/run.sh) running bench/vm_disruption.py with kernel WireGuard."""
    script = ROOT / "tests" / "vm" / "run.sh"
    if not script.exists():
        return {"status": "not run", "error": f"{script} is missing"}
    cache = ROOT / ".cache"
    cache.mkdir(exist_ok=True)
    # Under the checkout: the one directory the guest shares read-write with the host.
    result_dir = Path(tempfile.mkdtemp(prefix="bench-vm-", dir=cache))
    out = result_dir / "disruption.json"
    command = (
        f".venv/bin/python -m bench.vm_disruption --netns --backend kernel --peers {VM_PEERS} "
        f"--baseline-changes 2 --recovery-cap 40 --slow 10 --json {out} --workdir {result_dir}"
    )
    env = {**os.environ, "WGKUBE_VM_CMD": command, "WGKUBE_VM_TIMEOUT": str(VM_TIMEOUT)}
    started = time.monotonic()
    tail: list[str] = []
    try:
        proc = subprocess.Popen(
            [str(script)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"  vm| {line.rstrip()}", file=sys.stderr, flush=True)
            tail = [*tail[-30:], line.rstrip()]
        code = proc.wait()
        elapsed = time.monotonic() - started
        # The guest wrote the file over 9p before it powered off; give the host's view of
        # the directory a moment rather than read the console (which can lose lines).
        with contextlib.suppress(TimeoutError):
            wait_until(out.exists, timeout=10, what="the VM's result file")
        if not out.exists():
            for log_file in sorted(result_dir.rglob("hub-*.log")):
                print(f"  vm| --- {log_file.name} (tail)", file=sys.stderr)
                print(log_file.read_text(errors="replace")[-3000:], file=sys.stderr)
            return {
                "status": "failed",
                "error": f"the VM run produced no result (exit {code}); last output: "
                + " | ".join(tail[-8:]),
                "wall_s": elapsed,
            }
        data: dict[str, Any] = json.loads(out.read_text())
        data["wall_s"] = elapsed
        data["vm_exit"] = code
        if data.get("status") == "partial":
            data["error"] = (
                f"the VM run ended (exit {code}) before the baseline finished; last output: "
                + " | ".join(tail[-5:])
            )
        return data
    except OSError as exc:
        return {"status": "failed", "error": f"cannot run {script}: {exc}"}
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)


# -- sections and targets -----------------------------------------------------------------------


def _ok(record: Any) -> bool:
    return isinstance(record, dict) and record.get("status") not in ("failed", "not measured")


def build(host: dict[str, Any], vm: dict[str, Any] | None, quick: bool) -> dict[str, Any]:
    sizes: dict[str, Any] = host.get("sizes", {}) if _ok(host) else {}
    ns = sorted(int(n) for n in sizes)
    targets: list[dict[str, Any]] = []

    def target(name: str, goal: str, measured: str, met: bool | None) -> None:
        targets.append({"name": name, "target": goal, "measured": measured, "met": met})

    def at(n: int, key: str) -> dict[str, Any]:
        record = sizes.get(str(n), {})
        value = record.get(key, {"status": "not measured", "error": "no record"})
        return value if isinstance(value, dict) else {}

    largest = max(ns) if ns else 0

    # 1. convergence
    conv_rows, burst_rows = [], []
    for n in ns:
        c = at(n, "converge")
        row: dict[str, Any] = {"n": n, **{k: c.get(k) for k in ("ours_s", "baseline_s", "ratio")}}
        if c.get("status"):
            row["status"] = c["status"]
            row["error"] = c.get("error") or (c.get("timeouts") or [{}])[0].get("error")
            row["ratio_at_least"] = c.get("ratio_at_least")
            row["timeouts"] = c.get("timeouts")
        row["ours_runs_s"] = c.get("ours_runs_s")
        row["baseline_runs_s"] = c.get("baseline_runs_s")
        conv_rows.append(row)
        b, floor, made = at(n, "burst"), at(n, "burst_floor"), at(n, "create_baseline")
        brow: dict[str, Any] = {"n": n}
        if _ok(b) and _ok(floor) and _ok(made):
            base = made["create_s"] + floor["floor_s"]
            brow.update(
                ours_s=b["ours_s"],
                create_s=made["create_s"],
                create_with_hub_s=b["create_s"],
                apply_floor_s=floor["floor_s"],
                baseline_s=base,
                ratio=b["ours_s"] / base,
                reconciles_that_wrote=b["reconciles_that_wrote"],
            )
        else:
            brow.update(
                status="failed", error=b.get("error") or floor.get("error") or made.get("error")
            )
        burst_rows.append(brow)
    if ns:
        last = conv_rows[-1]
        if last.get("ratio") is not None:
            target(
                f"convergence ratio at N={largest}",
                f"<= {TARGET_RATIO:g}x the baseline",
                f"{last['ratio']:.1f}x ({last['ours_s']:.2f}s vs {last['baseline_s']:.2f}s)",
                last["ratio"] <= TARGET_RATIO,
            )
        elif last.get("ratio_at_least") is not None:
            target(
                f"convergence ratio at N={largest}",
                f"<= {TARGET_RATIO:g}x the baseline",
                f"> {last['ratio_at_least']:.0f}x: did not converge within "
                f"{(last.get('timeouts') or [{}])[0].get('timed_out_after_s', 0):.0f}s "
                f"(baseline {last['baseline_s']:.2f}s)",
                False,
            )
        else:
            target(f"convergence ratio at N={largest}", "<= 2x", "not measured", False)
        blast = burst_rows[-1]
        target(
            f"burst convergence ratio at N={largest}",
            f"<= {TARGET_RATIO:g}x (create + apply floor)",
            f"{blast['ratio']:.1f}x ({blast['ours_s']:.2f}s vs {blast['baseline_s']:.2f}s)"
            if "ratio" in blast
            else f"not measured: {blast.get('error')}",
            blast["ratio"] <= TARGET_RATIO if "ratio" in blast else False,
        )
    convergence = {
        "backend": "userspace",
        "definition": "hub process spawn on a fresh device -> N peers and N routes in the kernel",
        "baseline": "start wireguard-go + wg set key/port + one urllib LIST + one `wg set` "
        "for all peers + one `ip -batch` (address, up, all routes)",
        "preexisting": conv_rows,
        "burst_definition": "hub ready with no peers; N Nodes created over HTTP (8 in flight) "
        "-> N peers and routes; baseline = the time to create the same N Nodes into a fresh "
        "emulator with no hub running + `wg set` all peers and `ip -batch` all routes onto an "
        "existing device",
        "burst": burst_rows,
    }

    # 2. incremental + 6. latency
    inc_rows = []
    for n in ns:
        i = at(n, "incremental")
        if _ok(i):
            inc_rows.append(
                {
                    "n": n,
                    "samples": i["samples"],
                    "latency_s": i["latency_s"],
                    "isolated_latency_s": i.get("isolated_latency_s"),
                    "kernel_ops_median": i["kernel_ops_median"],
                    "kernel_ops_max": i["kernel_ops_max"],
                    "kernel_reads_median": i["kernel_reads_median"],
                    "kernel_reads_max": i["kernel_reads_max"],
                    "kernel_reads_in_a_scrape": i["kernel_reads_in_a_scrape"],
                    "verified_in_wireguard": i["verified_in_wireguard"],
                }
            )
        elif i:
            inc_rows.append({"n": n, "status": "failed", "error": i.get("error")})
    measured_inc = [r for r in inc_rows if "latency_s" in r]
    limit = DEBOUNCE + TARGET_LATENCY_SLACK
    limit99 = DEBOUNCE + TARGET_P99_SLACK
    big = next((r for r in measured_inc if r["n"] == largest), None)
    if big is not None:
        q = big["latency_s"]
        target(
            f"one change following another within the debounce, N={largest}: p50",
            f"<= {limit * 1000:.0f} ms (debounce {DEBOUNCE * 1000:.0f} ms + 50 ms)",
            f"{q['p50'] * 1000:.0f} ms ({q['p50'] / limit:.2f}x the target)",
            q["p50"] <= limit,
        )
        target(
            f"one change following another within the debounce, N={largest}: p99",
            f"<= {limit99 * 1000:.0f} ms (debounce + 100 ms)",
            f"{q['p99'] * 1000:.0f} ms ({q['p99'] / limit99:.2f}x the target)",
            q["p99"] <= limit99,
        )
    else:
        target(f"one change, N={largest}: p50", f"<= {limit * 1000:.0f} ms", "not measured", False)
    isolated = [r for r in measured_inc if r.get("isolated_latency_s")]
    if isolated:
        worst = max(isolated, key=lambda r: r["isolated_latency_s"]["p50"])
        each = ", ".join(
            f"N={r['n']}: {r['isolated_latency_s']['p50'] * 1000:.0f} ms" for r in isolated
        )
        target(
            "an isolated change (quiet for a debounce before it), p50 at every N",
            f"<= {TARGET_ISOLATED_S * 1000:.0f} ms",
            f"{each} (worst {worst['isolated_latency_s']['p50'] / TARGET_ISOLATED_S:.2f}x)",
            worst["isolated_latency_s"]["p50"] <= TARGET_ISOLATED_S,
        )
    else:
        target("an isolated change, p50", "<= 50 ms", "not measured", False)
    if len(measured_inc) >= 3:
        medians = {r["n"]: r["kernel_ops_median"] for r in measured_inc}
        target(
            "kernel writes per change (counted from outside) independent of N",
            f"the same median at {len(medians)} sizes",
            ", ".join(f"N={n}: {m:g}" for n, m in medians.items()),
            len(set(medians.values())) == 1,
        )
        reads = {r["n"]: r["kernel_reads_median"] for r in measured_inc}
        control = ", ".join(f"N={r['n']}: {r['kernel_reads_in_a_scrape']}" for r in measured_inc)
        target(
            "kernel reads per change (traced from outside: netlink dumps, UAPI get) "
            "independent of N",
            f"a median of 0 at {len(reads)} sizes (any read here is a whole dump: it grows "
            "with N, however few they are)",
            ", ".join(f"N={n}: {m:g}" for n, m in reads.items())
            + f" (the control, reads seen in one /metrics scrape: {control})",
            len(reads) >= 3 and all(m == 0 for m in reads.values()),
        )
    else:
        target("kernel writes per change independent of N", "3 sizes", "not measured", False)
        target("kernel reads per change independent of N", "3 sizes", "not measured", False)
    incremental = {
        "definition": "merge-PATCH of one Node's allowed-ips annotation -> the new route is in "
        "the kernel, polled every ms. Pairs: A after a quiet debounce interval (isolated), B "
        "a few ms after A (it follows A within the debounce; latency_s). Kernel writes per "
        "change = (route events from `ip monitor route` + peers changed in a `wg show dump` "
        "diff) for the pair / 2; verified with `wg show` after the samples. Kernel reads per "
        "change = the hub's netlink dumps and UAPI `get=1` seen by `strace -f -p` from each "
        "patch to 0.2 s after its route, over 5 more isolated changes after the timed ones "
        "(a /metrics scrape is the control: it must show a read)",
        "debounce_s": DEBOUNCE,
        "results": inc_rows,
    }

    latency_n = int(host.get("latency_n") or (min(ns, key=lambda n: abs(n - 100)) if ns else 0))
    lat = at(latency_n, "incremental") if ns else {}
    latency: dict[str, Any] = {"n": latency_n, "debounce_s": DEBOUNCE}
    if _ok(lat):
        latency.update(samples=lat["samples"], latency_s=lat["latency_s"], raw_s=lat["latencies_s"])
    else:
        latency.update(status="failed", error=lat.get("error", "not measured"))

    # 3. disruption
    disruption: dict[str, Any]
    if quick:
        disruption = host.get("disruption") or {"status": "failed", "error": "no record"}
        disruption = {"where": "host, userspace (--quick: no VM)", **disruption}
    elif vm is None:
        disruption = {"status": "not run", "error": "--no-vm given"}
    else:
        disruption = {"where": "VM (TCG), kernel WireGuard, one boot", **vm}
    if _ok(disruption) and "ours" in disruption:
        ours, base = disruption["ours"], disruption.get("baseline")
        versus = (
            f"baseline: {base['lost']} lost, longest gap {base['longest_gap_s']:.1f}s"
            if base
            else "baseline not measured"
        )
        target(
            f"disruption: lost packets, ours ({disruption.get('backend')})",
            "0",
            f"{ours['lost']} lost, longest gap {ours['longest_gap_s']:.3f}s ({versus})",
            ours["lost"] == 0,
        )
    else:
        target(
            "disruption: lost packets, ours", "0", f"not measured: {disruption.get('error')}", False
        )

    # 4. restart
    restart_rows = []
    for n in ns:
        r = at(n, "restart")
        restart_rows.append({"n": n, **r})
    rlast = restart_rows[-1] if restart_rows else {}
    if _ok(rlast) and "ready_s" in rlast:
        target(
            f"restart at N={largest}: kernel writes (route events + dump diff, 3 s past ready)",
            "0",
            f"{rlast['kernel_ops']} (the hub logged {rlast.get('logged_ops')})",
            rlast["kernel_ops"] == 0,
        )
        target(
            f"restart at N={largest}: ready",
            f"<= {TARGET_RATIO:g}x the floor (Python with the hub's imports + LIST + one dump)",
            f"{rlast['ratio']:.1f}x ({rlast['ready_s']:.2f}s vs {rlast['floor_s']:.2f}s)",
            rlast["ratio"] <= TARGET_RATIO,
        )
    else:
        target(
            f"restart at N={largest}: kernel writes",
            "0",
            f"not measured: {rlast.get('error')}",
            False,
        )
    restart = {
        "definition": "SIGTERM the hub, start it again -> /readyz ready",
        "results": restart_rows,
    }

    # 5. memory
    mem_rows = []
    for n in ns:
        per = sizes.get(str(n), {}).get("memory_kib") or {}
        hwm = {k: v.get("VmHWM") for k, v in per.items() if v.get("VmHWM")}
        peak = max(hwm.values()) if hwm else None
        mem_rows.append(
            {
                "n": n,
                "peak_vmhwm_mb": peak * 1024 / 1e6 if peak else None,
                "vmhwm_kib_by_process": hwm,
            }
        )
    peak_mb = mem_rows[-1]["peak_vmhwm_mb"] if mem_rows else None
    idle_kib = host.get("idle_python_kib")
    idle_mb = idle_kib * 1024 / 1e6 if isinstance(idle_kib, int) else None
    if isinstance(peak_mb, float):
        target(
            f"hub peak RSS at N={largest}",
            f"<= {TARGET_MEMORY_MB:g} MB",
            f"{peak_mb:.0f} MB ({peak_mb / TARGET_MEMORY_MB:.2f}x the target; an idle Python "
            f"with the same imports: {idle_mb:.0f} MB)"
            if idle_mb
            else f"{peak_mb:.0f} MB",
            peak_mb <= TARGET_MEMORY_MB,
        )
    else:
        target(f"hub peak RSS at N={largest}", f"<= {TARGET_MEMORY_MB:g} MB", "not measured", False)
    memory = {
        "definition": "VmHWM of each hub process (MB = 10^6 bytes)",
        "idle_python_mb": idle_mb,
        "results": mem_rows,
    }

    # 6. API load: the hub's defaults, as shipped
    from wgkube.operator.hub import LIST_PAGE
    from wgkube.operator.settings import HubSettings

    relist = HubSettings.model_fields["resync_interval"].default
    target(
        "API load in steady state: no periodic full LIST more often than every 10 min",
        ">= 600 s between LISTs by default; paginated",
        f"--resync-interval default {relist:g} s; LIST pages of {LIST_PAGE} with the peer label "
        "selector (no resourceVersion=0: the server would ignore the limit); read from the "
        "shipped settings, not measured",
        relist >= 600,
    )

    return {
        "convergence": convergence,
        "incremental": incremental,
        "disruption": disruption,
        "restart": restart,
        "memory": memory,
        "latency": latency,
        "targets": targets,
    }


# -- the table ----------------------------------------------------------------------------------


def _s(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}s" if isinstance(value, int | float) else "-"


def _ms(value: Any) -> str:
    return f"{value * 1000:.0f}" if isinstance(value, int | float) else "-"


def _why(record: dict[str, Any]) -> str:
    return f"{str(record.get('status', 'failed')).upper()}: {str(record.get('error'))[:200]}"


def _convergence_lines(c: dict[str, Any]) -> list[str]:
    lines = [
        "1. Convergence at scale (userspace): hub start on a fresh device, N Nodes in the API",
        f"   {'N':>6} {'ours':>10} {'baseline':>10} {'ratio':>8}",
    ]
    for r in c["preexisting"]:
        n, base = r["n"], _s(r.get("baseline_s"))
        if r.get("ratio") is not None:
            lines.append(f"   {n:>6} {_s(r['ours_s']):>10} {base:>10} {r['ratio']:>7.1f}x")
            continue
        waited = ((r.get("timeouts") or [{}])[0]).get("timed_out_after_s")
        ours = "> " + _s(waited, 0) if waited else "-"
        ratio = f"> {r['ratio_at_least']:.0f}x" if r.get("ratio_at_least") else "-"
        lines.append(f"   {n:>6} {ours:>10} {base:>10} {ratio:>8}  {_why(r)}")
    lines += [
        "   Burst: N Nodes created while the hub runs (baseline = creation time + apply floor)",
        f"   {'N':>6} {'ours':>10} {'baseline':>10} {'ratio':>8} {'create':>8} {'floor':>8}"
        " reconciles",
    ]
    for r in c["burst"]:
        if "ratio" not in r:
            lines.append(f"   {r['n']:>6} {_why(r)}")
            continue
        lines.append(
            f"   {r['n']:>6} {_s(r['ours_s']):>10} {_s(r['baseline_s']):>10} "
            f"{r['ratio']:>7.1f}x {_s(r['create_s']):>8} {_s(r['apply_floor_s'], 3):>8} "
            f"{r['reconciles_that_wrote']}"
        )
    return lines


def _incremental_lines(inc: dict[str, Any]) -> list[str]:
    lines = [
        "2. Incremental change: one peer's allowed-ips annotation -> new route in the kernel",
        "   (B: a change a few ms after another; A: isolated, after a quiet debounce interval)",
        f"   {'N':>6} {'pairs':>8} {'B p50':>7} {'B p99':>7} {'B max':>7} {'A p50':>7} {'A p99':>7}"
        "  kernel writes, reads per change, from outside (median, max)",
    ]
    for r in inc["results"]:
        if "latency_s" not in r:
            lines.append(f"   {r['n']:>6} {_why(r)}")
            continue
        q, a = r["latency_s"], r.get("isolated_latency_s") or {}
        lines.append(
            f"   {r['n']:>6} {r['samples']:>8} {_ms(q['p50']):>7} {_ms(q['p99']):>7} "
            f"{_ms(q['max']):>7} {_ms(a.get('p50')):>7} {_ms(a.get('p99')):>7}  "
            f"{r['kernel_ops_median']:g}, {r['kernel_ops_max']:g}; "
            f"{r['kernel_reads_median']:g}, {r['kernel_reads_max']:g}"
            + ("" if r["verified_in_wireguard"] else "  (wg show disagrees!)")
        )
    return lines


def _disruption_lines(d: dict[str, Any]) -> list[str]:
    lines = [
        "3. Disruption: 2 spokes ping the hub every 10 ms while peers are added and removed",
        f"   ({d.get('where', '')})",
    ]
    if "ours" not in d:
        return [*lines, f"   NOT MEASURED {_why(d)}"]
    o, b = d["ours"], d.get("baseline")
    ours = f"ours: {d['peers']} peers added+removed via annotations"
    lines += [
        f"   {'':<52} {'lost':>6} {'longest gap':>12}",
        f"   {ours:<52} {o['lost']:>6} {_s(o['longest_gap_s'], 3):>12}"
        f"   ({o['reconciles_that_wrote']} reconciles in {_s(o['churn_s'])})",
    ]
    if not b:
        return [*lines, f"   baseline NOT MEASURED ({d.get('status', 'failed')}): {d.get('error')}"]
    base = f"baseline: wg-quick down && up, {b.get('changes')} change(s)"
    down_up = ", ".join(_s(c["down_up_s"]) for c in b.get("per_change", []))
    lines.append(
        f"   {base:<52} {b['lost']:>6} {_s(b['longest_gap_s'], 3):>12}"
        f"   (down+up took {down_up})"
        + ("" if b.get("recovered") else f"; not recovered within {b.get('recovery_cap_s')}s")
    )
    return lines


def render(results: dict[str, Any]) -> str:
    env, s = results["environment"], results["sections"]
    v = env["versions"]
    lines = [
        f"wg-kube benchmarks ({results['mode']}), {results['started']}, "
        f"{results['duration_s']:.0f}s wall",
        f"  {env['cpu_model']}, {env['cpu_count']} cores, kernel {env['kernel']}, load average "
        f"{env['loadavg_start'][0]:.1f} -> {env.get('loadavg_end', [0.0])[0]:.1f}",
        f"  python {env['python']}, kopf {v['kopf']}, pyroute2 {v['pyroute2']}, "
        f"{v['wireguard-go']}",
        "  ratios are ours / baseline, measured back to back in the same run",
    ]
    if results["mode"] == "quick":
        lines.append("  --quick: small N, few samples, no VM: a smoke test; targets not meaningful")
    lines += ["", *_convergence_lines(s["convergence"])]
    lines += ["", *_incremental_lines(s["incremental"])]
    lines += ["", *_disruption_lines(s["disruption"])]
    lines += [
        "",
        "4. Restart with N peers in place -> /readyz ready (writes seen from outside)",
        f"   {'N':>6} {'ready':>10} {'floor':>10} {'ratio':>7} {'kernel writes':>14}",
    ]
    for r in s["restart"]["results"]:
        if "ready_s" in r:
            lines.append(
                f"   {r['n']:>6} {_s(r['ready_s']):>10} {_s(r.get('floor_s')):>10} "
                f"{r.get('ratio', 0):>6.1f}x {r['kernel_ops']:>14}"
            )
        else:
            lines.append(f"   {r['n']:>6} {_why(r)}")
    idle = s["memory"].get("idle_python_mb")
    lines += [
        "",
        "5. Memory: hub peak RSS (VmHWM, MB = 10^6 bytes)"
        + (f"; idle Python with the same imports {idle:.0f} MB" if idle else ""),
    ]
    for r in s["memory"]["results"]:
        each = ", ".join(
            f"{k}: {val * 1024 / 1e6:.0f}" for k, val in r["vmhwm_kib_by_process"].items()
        )
        peak = r["peak_vmhwm_mb"]
        lines.append(
            f"   N={r['n']:<6} peak {peak:.0f} MB ({each})" if peak else f"   N={r['n']} -"
        )
    lat = s["latency"]
    lines += [
        "",
        f"6. Event-to-apply latency, N={lat['n']}, debounce {lat['debounce_s'] * 1000:.0f} ms",
    ]
    if "latency_s" in lat:
        q = lat["latency_s"]
        lines.append(
            f"   {lat['samples']} samples: p50 {_ms(q['p50'])} ms, p95 {_ms(q['p95'])} ms, "
            f"p99 {_ms(q['p99'])} ms (min {_ms(q['min'])}, max {_ms(q['max'])})"
        )
    else:
        lines.append(f"   NOT MEASURED {_why(lat)}")
    lines += ["", "Targets"]
    for t in s["targets"]:
        verdict = "MET    " if t["met"] else "NOT MET"
        lines.append(f"   [{verdict}] {t['name']}: target {t['target']}; measured {t['measured']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, few samples, no VM")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (default bench/results/DATE.json, kept in the repo)",
    )
    parser.add_argument("--no-vm", action="store_true", help="skip the VM (disruption)")
    parser.add_argument(
        "--vm-only", action="store_true", help="only the VM part (disruption), its own JSON"
    )
    args = parser.parse_args(argv)
    if args.json is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
        suffix = "-quick" if args.quick else "-vm" if args.vm_only else ""
        args.json = ROOT / "bench" / "results" / f"{stamp}{suffix}.json"
    if os.geteuid() != 0:
        print("bench.run: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.vm_only:
        started = time.monotonic()
        vm_results: dict[str, Any] = {
            "mode": "vm-only",
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "environment": environment(),
        }
        log("disruption in the VM (one boot, kernel WireGuard)")
        vm_results["disruption"] = {"where": "VM (TCG), kernel WireGuard, one boot", **run_vm()}
        vm_results["duration_s"] = time.monotonic() - started
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(vm_results, indent=2, default=str) + "\n")
        print("\n".join(_disruption_lines(vm_results["disruption"])))
        print(f"\nJSON: {args.json}")
        return 0 if "ours" in vm_results["disruption"] else 1
    mode = "quick" if args.quick else "full"
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": mode,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": environment(),
    }
    log(f"host suite ({mode}) in a throw-away network namespace")
    host = run_host(args.quick)
    vm = None
    if not args.quick and not args.no_vm:
        log("disruption in the VM (one boot, kernel WireGuard)")
        vm = run_vm()
    log("/metrics scrape cost (wireguard-go, throw-away namespace)")
    results["scrape"] = scrape.run(1000 if args.quick else 5000)
    log("one spoke agent's API load (API emulator's request log)")
    results["spoke_load"] = spoke_load.run([100] if args.quick else [100, 1000, 10000])
    log("failover between two hubs (wireguard-go, the lab's namespaces, under the lab lock)")
    results["failover"] = failover.run(1 if args.quick else 3)
    log("the N-peer scenarios against the real kube-apiserver (make controlplane)")
    results["realapi"] = realapi.run(1000 if args.quick else 10000, 5 if args.quick else 20)
    results["environment"]["loadavg_end"] = list(os.getloadavg())
    results["duration_s"] = time.monotonic() - started
    results["host_status"] = {k: v for k, v in host.items() if k in ("status", "error")}
    results["sections"] = build(host, vm, args.quick)
    results["sections"]["targets"] += realapi.targets(results["realapi"])
    results["raw"] = {"host": host, "vm": vm}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(render(results))
    print(scrape.line(results["scrape"]))
    print("\n".join(spoke_load.lines(results["spoke_load"])))
    print("\n".join(failover.lines(results["failover"])))
    print(f"\nJSON: {args.json}")
    return 0 if _ok(host) else 1


if __name__ == "__main__":
    sys.exit(main())

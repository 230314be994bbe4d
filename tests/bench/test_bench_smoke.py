"""`python -m bench.run --quick` works end to end and reports every section with numbers.

A smoke test of the harness only: nothing here is about speed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wgkube.testing.netns import can_make_namespaces

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.userspace]


def _missing() -> str | None:
    reason = can_make_namespaces()
    if reason:
        return reason
    for tool in ("wireguard-go", "wg", "wg-quick", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if (why := _missing()) is not None:
        pytest.skip(f"the benchmark harness needs root and WireGuard tools: {why}")
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    assert "Targets" in proc.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_the_environment_is_recorded(results: dict[str, Any]) -> None:
    env = results["environment"]
    assert env["cpu_model"]
    assert env["kernel"]
    assert env["python"]
    for package in ("kopf", "pyroute2", "wireguard-go"):
        assert env["versions"][package]
    assert results["mode"] == "quick"


def test_convergence_has_ours_baseline_and_ratio(results: dict[str, Any]) -> None:
    section = results["sections"]["convergence"]
    for row in [*section["preexisting"], *section["burst"]]:
        assert number(row["ours_s"]), row
        assert number(row["baseline_s"]), row
        assert number(row["ratio"]), row


def test_incremental_has_latency_and_kernel_ops(results: dict[str, Any]) -> None:
    rows = results["sections"]["incremental"]["results"]
    assert len(rows) >= 3  # O(1) is shown at three sizes
    for row in rows:
        assert number(row["latency_s"]["p50"]), row
        assert number(row["isolated_latency_s"]["p50"]), row
        assert number(row["kernel_ops_median"]), row
        assert number(row["kernel_reads_median"]), row
        # The tracer's control: a /metrics scrape reads the device, so it must see one.
        assert row["kernel_reads_in_a_scrape"] >= 1, row
        assert row["verified_in_wireguard"] is True


def test_disruption_counts_lost_packets_for_ours_and_the_baseline(
    results: dict[str, Any],
) -> None:
    section = results["sections"]["disruption"]
    for side in ("ours", "baseline"):
        assert number(section[side]["lost"]), section
        assert number(section[side]["longest_gap_s"]), section
        assert section[side]["counted"] > 0


def test_restart_memory_and_latency_have_numbers(results: dict[str, Any]) -> None:
    sections = results["sections"]
    for row in sections["restart"]["results"]:
        assert number(row["ready_s"]), row
        assert number(row["floor_s"]), row
        assert number(row["kernel_ops"]), row
    assert number(sections["memory"]["idle_python_mb"])
    for row in sections["memory"]["results"]:
        assert number(row["peak_vmhwm_mb"]), row
    latency = sections["latency"]["latency_s"]
    for key in ("p50", "p95", "p99"):
        assert number(latency[key])


def test_every_target_has_a_verdict(results: dict[str, Any]) -> None:
    targets = results["sections"]["targets"]
    assert len(targets) >= 6
    for t in targets:
        assert t["met"] in (True, False), t
        assert t["measured"]

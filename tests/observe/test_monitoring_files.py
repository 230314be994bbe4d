"""manifests/monitoring: the alert rules pass promtool and their unit tests; the dashboard
and scrape config refer only to metrics wg-kube exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool")
EXPORTED = {
    "wgkube_peer_info",
    "wgkube_peer_last_handshake_timestamp_seconds",
    "wgkube_peer_receive_bytes_total",
    "wgkube_peer_transmit_bytes_total",
    "wgkube_peer_state",
    "wgkube_peers",
    "wgkube_rejected_peers",
    "wgkube_reconciles_total",
    "wgkube_reconcile_duration_seconds_bucket",
    "wgkube_kernel_operations_total",
    "wgkube_last_reconcile_success_timestamp_seconds",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=MONITORING, capture_output=True, text=True, check=False
    )


@needs_promtool
def test_the_alert_rules_pass_promtool_check_rules() -> None:
    proc = promtool("check", "rules", "alerts.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_each_alert_fires_and_does_not_fire_in_promtool_test_rules() -> None:
    tests = yaml.safe_load((MONITORING / "alerts-test.yaml").read_text())["tests"]
    alerts = {
        r["alert"]
        for g in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
        for r in g["rules"]
    }
    cases = [c for t in tests for c in t["alert_rule_test"]]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == alerts
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == alerts
    proc = promtool("test", "rules", "alerts-test.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dashboard_and_rules_use_only_exported_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [
        r["expr"]
        for g in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
        for r in g["rules"]
    ]
    used = {m for e in exprs for m in re.findall(r"wgkube_[a-z_]+", e)}
    assert used
    assert used <= EXPORTED, used - EXPORTED

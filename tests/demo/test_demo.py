"""`make demo` run non-interactively: real processes, real WireGuard, zero loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wgkube.testing.netns import can_make_namespaces

pytestmark = pytest.mark.skipif(can_make_namespaces() is not None, reason="needs root and ip")


def test_the_demo_answers_every_ping_and_loses_nothing_while_a_spoke_joins(
    tmp_path: Path,
) -> None:
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wgkube.demo",
            "--workdir",
            str(tmp_path / "demo"),
            "--json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert summary["pings"], "no pings were made"
    for path, counts in summary["pings"].items():
        assert counts["sent"] > 0, path
        assert counts["received"] == counts["sent"], path
    assert summary["live_add"]["sent"] > 100
    assert summary["live_add"]["lost"] == 0
    assert "cleaned up" in proc.stdout
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "wgkdemo-" not in leftovers
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert "wgkdemo0" not in links

"""`make demo` run non-interactively, again and again in one state directory: real
processes, real WireGuard, zero loss, and nothing left behind after each clean-up.

One run takes about 20 s on 2 cores. Run the file under the lab lock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wgkube.testing.lab import (
    API_PORT,
    BRIDGE,
    INTERNET_BRIDGE,
    INTERNET_VETH_PREFIX,
    NS_PREFIX,
    SOCKET_DIR,
    VETH_PREFIX,
)
from wgkube.testing.netns import can_make_namespaces

pytestmark = pytest.mark.skipif(can_make_namespaces() is not None, reason="needs root and ip")

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 300
PASSED = "RESULT: all pings answered, 0 lost during the live change"


def demo(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgkube.demo", "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        cwd=ROOT,
    )


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT + 120,
        check=False,
    )


def assert_passed(proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    assert proc.stdout.strip().splitlines()[-1] == PASSED, output
    live = re.search(r"(\d+) pings in [\d.]+s, lost (\d+)", proc.stdout)
    assert live is not None, output
    assert int(live[1]) > 100, output
    assert int(live[2]) == 0, output
    answers = re.findall(r"-> .*: (\d+)/(\d+)", proc.stdout)
    assert len(answers) >= 7, output  # 3 spokes, spoke to spoke, node to spoke and back, ...
    for answered in answers:
        assert answered[0] == answered[1] != "0", output
    # The ordinary node: in the status table as a router of the overlay, and reaching a
    # spoke (and the spoke it) over the tunnel.
    routers = [ln.split() for ln in proc.stdout.splitlines() if re.match(r"\s+node-1\s+router", ln)]
    assert len(routers) == 2, output  # both status tables
    assert all(r[2] == "100.96.0.0/24" for r in routers), output
    assert "routes via hub hub (198.18.0.1)" in proc.stdout, output
    assert re.search(r"node-1 -> spoke-1 100\.96\.0\.11 .*: 5/5", proc.stdout), output
    assert re.search(r"spoke-1 -> node-1 198\.18\.0\.2 .*: 5/5", proc.stdout), output


def demo_processes(workdir: Path) -> list[str]:
    """Processes of the demo: anything naming its workdir, and the lab's wireguard-go."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        lab_wg = argv[0].endswith(b"wireguard-go") and text.split()[-1].startswith(
            ("wg-hub", "wg-spoke")
        )
        if str(workdir) in text or lab_wg:
            found.append(f"{cmdline.parent.name}: {text}")
    return found


def what_is_left(workdir: Path) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left = [f"namespace {n.split()[0]}" for n in netns.splitlines() if n.startswith(NS_PREFIX)]
    names = [ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines() if ":" in ln]
    left += [
        f"link {n}"
        for n in names
        if n in (BRIDGE, INTERNET_BRIDGE) or n.startswith((VETH_PREFIX, INTERNET_VETH_PREFIX))
    ]
    if SOCKET_DIR.is_dir():
        left += [
            f"socket {p}"
            for p in SOCKET_DIR.glob("wg-*.sock")
            if p.name.startswith(("wg-hub", "wg-spoke"))
        ]
    left += [f"process {p}" for p in demo_processes(workdir)]
    return left


def test_make_demo_twice_in_a_row_passes_both_times_and_leaves_nothing() -> None:
    workdir = ROOT / ".demo"
    for _ in range(2):
        assert_passed(make("demo"))
        assert what_is_left(workdir) == []


def test_a_kept_demo_is_removed_by_demo_clean_and_the_next_run_passes(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    kept = demo(workdir, "--keep")
    try:
        assert_passed(kept)
        assert "left running" in kept.stdout
        assert f"export KUBECONFIG={workdir / 'kubeconfig'}" in kept.stdout
        assert any(n.startswith("namespace") for n in what_is_left(workdir))
    except AssertionError:
        demo(workdir, "--clean")  # a kept run that failed here must not spoil the next tests
        raise

    cleaned = demo(workdir, "--clean")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert cleaned.stdout.strip() == "demo removed"
    assert what_is_left(workdir) == []
    assert not (workdir / "kubeconfig").exists()
    assert not (workdir / "state.json").exists()

    summary_path = tmp_path / "summary.json"
    again = demo(workdir, "--json", str(summary_path))
    assert_passed(again)
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert summary["live_add"]["lost"] == 0
    assert summary["router"] == {"node": "node-1", "routes": ["100.96.0.0/24 via 198.18.0.1"]}
    assert all(c["received"] == c["sent"] > 0 for c in summary["pings"].values()), summary
    assert what_is_left(workdir) == []


def test_a_demo_killed_with_sigkill_midway_is_removed_by_the_next_run(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        victim = subprocess.Popen(
            [sys.executable, "-m", "wgkube.demo", "--workdir", str(workdir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    deadline = time.monotonic() + RUN_TIMEOUT
    while "every spoke has completed a handshake" not in log.read_text():
        assert victim.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert any(n.startswith("namespace") for n in what_is_left(workdir)), "nothing to recover"

    after = demo(workdir)
    assert_passed(after)
    assert "removed the previous demo" in after.stdout
    assert what_is_left(workdir) == []


def test_the_emulator_port_already_taken_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", API_PORT))
        holder.listen()
        proc = demo(workdir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("demo failed: the API emulator exited"), output
    assert f"{API_PORT}: the port is already in use" in last, output
    assert f"log: {workdir / 'logs' / 'apiserver.log'}" in last, output
    assert what_is_left(workdir) == []


def test_demo_clean_with_nothing_set_up_says_so(tmp_path: Path) -> None:
    proc = demo(tmp_path / "demo", "--clean")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "nothing to clean"
    assert os.listdir(tmp_path) in ([], ["demo"])

"""The demo's expected failures: one line `demo failed: ...` naming the step (and its log),
exit status 1, no traceback, nothing left behind. Run the file under the lab lock."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.demo.test_demo import ROOT, what_is_left
from wgkube.kernel import kernel_wireguard_unavailable
from wgkube.testing.lab import Lab, LabError, LabState, Node
from wgkube.testing.netns import can_make_namespaces

needs_root = pytest.mark.skipif(can_make_namespaces() is not None, reason="needs root and ip")


def demo(
    workdir: Path, *args: str, prefix: tuple[str, ...] = (), path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [*prefix, sys.executable, "-m", "wgkube.demo", "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=env,
    )


def one_line_failure(proc: subprocess.CompletedProcess[str]) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("demo failed: "), output
    return last


@pytest.fixture
def bin_dir() -> Iterator[Path]:
    """A PATH holding only the programs a case chooses to give the demo."""
    path = Path(tempfile.mkdtemp(prefix="wgkube-demo-bin-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def give(bin_dir: Path, *programs: str) -> str:
    for program in programs:
        found = shutil.which(program)
        assert found is not None, program
        (bin_dir / program).symlink_to(found)
    return str(bin_dir)


@needs_root
def test_without_root_the_demo_says_to_run_it_as_root(tmp_path: Path) -> None:
    nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    line = one_line_failure(demo(tmp_path / "demo", prefix=nobody))
    assert line == "demo failed: network namespaces need root: run it as root (sudo make demo)"


@needs_root
def test_a_missing_ping_names_the_package(tmp_path: Path, bin_dir: Path) -> None:
    line = one_line_failure(demo(tmp_path / "demo", path=give(bin_dir, "ip")))
    assert line == (
        "demo failed: `ping` is not installed: apt-get install iputils-ping (make demo does)"
    )
    assert what_is_left(tmp_path / "demo") == []


@needs_root
def test_no_wireguard_at_all_names_the_package(tmp_path: Path, bin_dir: Path) -> None:
    if asyncio.run(kernel_wireguard_unavailable()) is None:
        pytest.skip("this kernel has WireGuard: nothing is missing")
    line = one_line_failure(demo(tmp_path / "demo", path=give(bin_dir, "ip", "ping")))
    assert "apt-get install wireguard-go" in line
    assert what_is_left(tmp_path / "demo") == []


@needs_root
def test_a_stray_demo_namespace_is_reported_with_the_command_that_removes_it(
    tmp_path: Path,
) -> None:
    subprocess.run(["ip", "netns", "add", "wgkdemo-stray"], check=True)
    try:
        line = one_line_failure(demo(tmp_path / "demo"))
        assert "namespace wgkdemo-stray" in line
        assert line.endswith("remove it with make demo-clean (or: python -m wgkube.demo --clean)")
        cleaned = demo(tmp_path / "demo", "--clean")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert cleaned.stdout.strip() == "demo removed"
        assert what_is_left(tmp_path / "demo") == []
    finally:
        subprocess.run(["ip", "netns", "del", "wgkdemo-stray"], check=False, capture_output=True)


def test_a_node_whose_wg_kube_exited_is_one_line_with_its_last_words_and_log(
    tmp_path: Path,
) -> None:
    lab = Lab(tmp_path / "lab")
    node = Node("spoke-1", "spoke", 11)
    log = lab.log_path(node)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "print('starting'); print('wg-kube spoke: it broke'); exit(1)"],
            stdout=out,
        )
    lab._children.append(proc)
    proc.wait()
    node.pid = proc.pid
    lab.state.nodes.append(node)
    with pytest.raises(LabError) as raised:
        lab.check_alive()
    assert str(raised.value) == (
        f"wg-kube spoke on spoke-1 exited with status 1 (wg-kube spoke: it broke); log: {log}"
    )


@needs_root
def test_a_record_left_by_a_reboot_is_removed_without_signalling_whoever_has_its_pids(
    tmp_path: Path,
) -> None:
    # After a reboot the namespaces and processes are gone; their pids may belong to
    # anyone by now, and must not be signalled.
    workdir = tmp_path / "demo"
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state = LabState(
            str(workdir),
            bridge=True,
            api_pid=bystander.pid,
            nodes=[Node("hub", "hub", 1, ns="wgkdemo-hub", pid=bystander.pid)],
        )
        workdir.mkdir()
        state.save()
        (workdir / "kubeconfig").write_text("current-context: gone\n")
        cleaned = demo(workdir, "--clean")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert cleaned.stdout.strip() == "demo removed"
        assert bystander.poll() is None
        assert os.listdir(workdir) == []
    finally:
        bystander.kill()
        bystander.wait()

"""A real `kopf run` subprocess against the emulator: selectors, index, events, recovery."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import wait_for
from wgkube.testing import ApiServer, EmulatorControls

PEER = "wireguard.kube/peer"
OPERATOR = Path(__file__).with_name("kopf_probe_operator.py")
TIMEOUT = 30.0  # generous: the machine is shared; the typical wait is well under a second


@pytest.fixture
def kopf_run(api_server: ApiServer, kube_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """Start `kopf run` with its own user; yield its log file; stop it at the end."""
    kubeconfig = api_server.write_kubeconfig(tmp_path / "kopf.kubeconfig", user="kopf-probe")
    env = dict(kube_env, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
    log = tmp_path / "kopf.log"
    with log.open("w") as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "-A", "--verbose", str(OPERATOR)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            yield log
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode is not None


def peer_messages(api_server: ApiServer, name: str) -> list[str]:
    return [
        str(e.get("message"))
        for e in api_server.events(for_object=name)
        if e.get("reason") == "PeerSeen"
    ]


def wait_message(api_server: ApiServer, log: Path, name: str, expected: str) -> None:
    try:
        wait_for(
            lambda: expected in peer_messages(api_server, name),
            timeout=TIMEOUT,
            message=f"event {expected!r}",
        )
    except TimeoutError:
        pytest.fail(
            f"no event {expected!r}; got {peer_messages(api_server, name)}\n"
            f"kopf log:\n{log.read_text()[-5000:]}"
        )


def kopf_watches(emulator: EmulatorControls, **extra: Any) -> list[Any]:
    return [
        r
        for r in emulator.requests
        if r.user == "kopf-probe" and r.verb == "watch" and r.resource == "nodes"
        if all(getattr(r, k) == v for k, v in extra.items())
    ]


def test_kopf_lists_watches_with_selectors_and_posts_events(
    api_server: ApiServer, emulator: EmulatorControls, kopf_run: Path
) -> None:
    api_server.create_node("hub", labels={PEER: "true"})
    api_server.create_node("bystander", labels={PEER: "false"})
    wait_message(api_server, kopf_run, "hub", "None hub note=- peers=hub")

    api_server.create_node("spoke-1", labels={PEER: "true"})
    wait_message(api_server, kopf_run, "spoke-1", "ADDED spoke-1 note=- peers=hub,spoke-1")
    api_server.patch_node("hub", {"metadata": {"annotations": {"note": "one"}}})
    wait_message(api_server, kopf_run, "hub", "MODIFIED hub note=one peers=hub,spoke-1")

    # The selector is applied by the server: kopf never even receives the bystander.
    node_requests = [
        r for r in emulator.requests if r.user == "kopf-probe" and r.resource == "nodes"
    ]
    assert {r.verb for r in node_requests} >= {"list", "watch"}
    assert all(r.query.get("labelSelector") == f"{PEER}=true" for r in node_requests)
    assert peer_messages(api_server, "bystander") == []

    # Dropped watches are re-established (from the last seen resourceVersion).
    watches_before = len(kopf_watches(emulator))
    assert emulator.drop_watches() >= 1
    wait_for(lambda: len(kopf_watches(emulator)) > watches_before, timeout=TIMEOUT)
    assert kopf_watches(emulator)[-1].query.get("resourceVersion")
    api_server.patch_node("hub", {"metadata": {"annotations": {"note": "two"}}})
    wait_message(api_server, kopf_run, "hub", "MODIFIED hub note=two peers=hub,spoke-1")

    # Leaving the selector is a deletion for kopf's watch (and its index).
    api_server.patch_node("spoke-1", {"metadata": {"labels": {PEER: None}}})
    api_server.patch_node("hub", {"metadata": {"annotations": {"note": "three"}}})
    wait_message(api_server, kopf_run, "hub", "MODIFIED hub note=three peers=hub")


def test_kopf_recovers_after_the_api_was_unavailable(
    api_server: ApiServer, emulator: EmulatorControls, kopf_run: Path
) -> None:
    api_server.create_node("hub", labels={PEER: "true"})
    wait_message(api_server, kopf_run, "hub", "None hub note=- peers=hub")
    with emulator.unavailable():
        wait_for(
            lambda: any(r.user == "kopf-probe" and r.status == 503 for r in emulator.requests),
            timeout=TIMEOUT,
            message="kopf to meet a 503",
        )
    api_server.patch_node("hub", {"metadata": {"annotations": {"note": "back"}}})
    wait_message(api_server, kopf_run, "hub", "MODIFIED hub note=back peers=hub")

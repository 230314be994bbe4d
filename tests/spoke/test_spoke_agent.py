"""The real spoke agent process against the API, programming a memory kernel."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time

from tests.spoke.conftest import NODE, PREFIX, SpokeHarness
from tests.support.procs import Process
from wgkube.domain.keys import PrivateKey
from wgkube.testing.apiserver import EmulatorControls, wait_for


def registered(spoke: SpokeHarness) -> dict[str, str] | None:
    meta = spoke.node().get("metadata", {})
    if (meta.get("labels") or {}).get(PREFIX + "peer") != "true":
        return None
    annotations: dict[str, str] = meta.get("annotations") or {}
    return annotations if PREFIX + "public-key" in annotations else None


class TestRegistration:
    def test_it_labels_and_annotates_its_own_node(self, spoke: SpokeHarness) -> None:
        spoke.start(WG_ENDPOINT="198.51.100.2", WG_ALLOWED_IPS="100.96.0.2/32,10.2.0.0/24")
        annotations = wait_for(lambda: registered(spoke), message="registration")
        key = PrivateKey.parse(spoke.key_file.read_text())
        assert annotations == {
            PREFIX + "public-key": key.public_key().b64,
            PREFIX + "allowed-ips": "10.2.0.0/24,100.96.0.2/32",
            PREFIX + "endpoint": "198.51.100.2:51820",
        }
        assert stat.S_IMODE(spoke.key_file.stat().st_mode) == 0o600

    def test_allowed_ips_default_to_the_address_and_no_endpoint_is_published(
        self, spoke: SpokeHarness
    ) -> None:
        spoke.start()
        annotations = wait_for(lambda: registered(spoke), message="registration")
        assert annotations[PREFIX + "allowed-ips"] == "100.96.0.2/32"
        assert PREFIX + "endpoint" not in annotations

    def test_it_reasserts_the_registration_when_someone_removes_it(
        self, spoke: SpokeHarness
    ) -> None:
        spoke.start()
        wait_for(lambda: registered(spoke), message="registration")
        spoke.api.patch_node(
            NODE,
            {
                "metadata": {
                    "labels": {PREFIX + "peer": None},
                    "annotations": {PREFIX + "public-key": None},
                }
            },
        )
        wait_for(lambda: registered(spoke), message="registration re-asserted")

    def test_the_key_survives_restarts_and_a_restart_writes_nothing(
        self, spoke: SpokeHarness
    ) -> None:
        hub_key = spoke.create_hub()
        first = spoke.start()
        spoke.wait_hub_peer(hub_key)
        wait_for(lambda: registered(spoke), message="registration")
        key = spoke.key_file.read_text()
        assert first.stop() == 0
        assert spoke.device.device() is not None  # a graceful stop leaves the tunnel
        writes = spoke.device.writes
        second = spoke.start()
        second.wait_log("tunnel to hub hub-1 in place (0 change(s))")
        assert "registered node" not in second.log  # already registered: no patch
        assert spoke.key_file.read_text() == key
        assert spoke.device.writes == writes
        assert "applying" not in second.log

    def test_a_malformed_key_file_is_fatal(self, spoke: SpokeHarness) -> None:
        spoke.key_file.parent.mkdir(parents=True)
        spoke.key_file.write_text("garbage")
        proc = spoke.start()
        assert proc.exit_code() == 1
        assert "malformed" in proc.log
        assert spoke.key_file.read_text() == "garbage"


class TestHub:
    def test_a_late_hub_is_waited_for_quietly_then_followed(self, spoke: SpokeHarness) -> None:
        proc = spoke.start()
        proc.wait_log("no hub yet")
        wait_for(lambda: spoke.device.device(), message="interface up before any hub")
        spoke.api.create_node("unrelated")  # churn while waiting must not repeat the message
        hub_key = spoke.create_hub()
        peer = spoke.wait_hub_peer(hub_key)
        assert peer["endpoint"] == "203.0.113.1:51820"
        assert peer["allowed_ips"] == ["100.96.0.1/32"]
        assert peer["keepalive"] == 25
        assert spoke.device.routes() == {"100.96.0.1/32"}
        assert proc.log.count("no hub yet") == 1

    def test_hub_key_and_endpoint_changes_are_followed_in_place(self, spoke: SpokeHarness) -> None:
        hub_key = spoke.create_hub()
        proc = spoke.start()
        spoke.wait_hub_peer(hub_key)
        spoke.update_hub("hub-1", endpoint="203.0.113.9:51821")
        wait_for(
            lambda: spoke.device.peers()[hub_key]["endpoint"] == "203.0.113.9:51821",
            message="endpoint followed",
        )
        new_key = PrivateKey.generate().public_key().b64
        spoke.update_hub("hub-1", key=new_key)
        peer = spoke.wait_hub_peer(new_key)
        assert peer["endpoint"] == "203.0.113.9:51821"
        assert proc.log.count("create link") == 1
        assert proc.proc.poll() is None

    def test_hub_allowed_ips_override_the_annotation(self, spoke: SpokeHarness) -> None:
        hub_key = spoke.create_hub(allowed="100.96.0.1/32")
        spoke.start(HUB_ALLOWED_IPS="100.96.0.0/16, 10.0.0.0/8")
        peer = spoke.wait_hub_peer(hub_key)
        assert peer["allowed_ips"] == ["10.0.0.0/8", "100.96.0.0/16"]
        assert spoke.device.routes() == {"10.0.0.0/8", "100.96.0.0/16"}

    def test_of_two_labelled_hub_nodes_the_older_is_chosen_with_a_warning(
        self, spoke: SpokeHarness
    ) -> None:
        older = spoke.create_hub("hub-b")
        time.sleep(1.1)  # creationTimestamp has one-second resolution
        spoke.create_hub("hub-a", endpoint="203.0.113.2:51820")
        proc = spoke.start(HUB_DISCOVERY="node")
        spoke.wait_hub_peer(older)
        proc.wait_log("2 Nodes are labelled as hubs (hub-a, hub-b); using hub-b")

    def test_of_two_announced_hubs_the_first_by_name_holds_the_configured_interface(
        self, spoke: SpokeHarness
    ) -> None:
        # Several hubs are followed together (tests/spoke/test_several_hubs.py); the
        # preferred one, here the first by name, keeps the configured interface.
        spoke.create_hub("hub-b")
        first = spoke.create_hub("hub-a", endpoint="203.0.113.2:51820")
        proc = spoke.start()
        spoke.wait_hub_peer(first)
        proc.wait_log("2 hubs are announced, in order of preference: hub-a (priority 0), hub-b")

    def test_a_labelled_hub_node_is_not_followed_by_default(self, spoke: SpokeHarness) -> None:
        impostor = PrivateKey.generate().public_key().b64
        spoke.api.create_node(
            "impostor",
            labels={PREFIX + "hub": "true"},
            annotations={PREFIX + "public-key": impostor, PREFIX + "allowed-ips": "0.0.0.0/0"},
        )
        proc = spoke.start()
        proc.wait_log("no hub yet: waiting for ConfigMap wg-kube/wg-kube-hub")
        hub_key = spoke.create_hub()
        spoke.wait_hub_peer(hub_key)
        assert impostor not in spoke.device.peers()

    def test_a_pinned_hub_key_refuses_another_and_keeps_the_trusted_one(
        self, spoke: SpokeHarness
    ) -> None:
        hub_key = spoke.create_hub()
        proc = spoke.start(HUB_PUBLIC_KEY=hub_key)
        good = spoke.wait_hub_peer(hub_key)
        impostor = PrivateKey.generate().public_key().b64
        spoke.update_hub("hub-1", key=impostor)
        proc.wait_log(f"no announced hub has the pinned public key {hub_key}")
        assert spoke.device.peers() == {hub_key: good}

    def test_a_pinned_hub_key_is_checked_in_node_discovery_too(self, spoke: SpokeHarness) -> None:
        spoke.create_hub()
        pinned = PrivateKey.generate().public_key().b64
        proc = spoke.start(HUB_DISCOVERY="node", HUB_PUBLIC_KEY=pinned)
        proc.wait_log(f"not the pinned {pinned}")
        assert spoke.device.peers() == {}

    def test_malformed_hub_annotations_keep_the_last_good_configuration(
        self, spoke: SpokeHarness
    ) -> None:
        hub_key = spoke.create_hub()
        proc = spoke.start(HUB_DISCOVERY="node")
        good = spoke.wait_hub_peer(hub_key)
        spoke.api.patch_node(
            "hub-1", {"metadata": {"annotations": {PREFIX + "public-key": "broken"}}}
        )
        proc.wait_log("hub data unusable, keeping the last good configuration")
        writes = spoke.device.writes
        # Nothing should happen, so there is no event to wait on: let several polls
        # (POLL_INTERVAL 0.5 s) pass, then check that nothing changed or was repeated.
        time.sleep(2.0)
        assert proc.log.count("hub data unusable") == 1
        assert spoke.device.peers() == {hub_key: good}
        assert spoke.device.writes == writes

    def test_a_malformed_announcement_keeps_the_last_good_configuration(
        self, spoke: SpokeHarness
    ) -> None:
        hub_key = spoke.create_hub()
        proc = spoke.start()
        good = spoke.wait_hub_peer(hub_key)
        spoke.write_announcement({"hubs.json": '{"version": 1, "hubs": [{"node": "x"}]}'})
        proc.wait_log("hub announcement refused, keeping the last good configuration")
        assert spoke.device.peers() == {hub_key: good}


class TestFaults:
    def test_interface_first_and_an_api_outage_keeps_the_tunnel(
        self, spoke: SpokeHarness, emulator: EmulatorControls
    ) -> None:
        hub_key = spoke.create_hub()
        with emulator.unavailable():
            proc = spoke.start()
            proc.wait_log("API server unavailable")
            device = spoke.device.device()
            assert device is not None
            assert device["addresses"] == ["100.96.0.2/32"]
        spoke.wait_hub_peer(hub_key)
        writes = spoke.device.writes
        with emulator.unavailable():
            # Nothing is supposed to happen, so there is no event to wait on: give the
            # agent several poll intervals (0.5 s) of outage, then check the kernel.
            time.sleep(2.0)
            assert spoke.device.writes == writes
            assert set(spoke.device.peers()) == {hub_key}
        assert proc.proc.poll() is None

    def test_down_removes_the_interface_and_the_registration(self, spoke: SpokeHarness) -> None:
        hub_key = spoke.create_hub()
        proc = spoke.start()
        spoke.wait_hub_peer(hub_key)
        proc.stop()
        down = spoke.start("--down")
        assert down.exit_code() == 0
        assert spoke.device.device() is None
        assert registered(spoke) is None
        assert spoke.key_file.exists()


def test_daemonize_returns_once_the_interface_exists_and_keeps_running(
    spoke: SpokeHarness,
) -> None:
    log_file = spoke.tmp / "wg-spoke.log"
    env = spoke.env(WG_DAEMONIZE="true", WG_LOG_FILE=str(log_file))
    result = subprocess.run(
        [sys.executable, "-m", "wgkube", "spoke"], env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 0
    device = spoke.device.device()  # exists the moment the command returns
    assert device is not None
    assert device["addresses"] == ["100.96.0.2/32"]
    pid = int(
        wait_for(
            lambda: re.search(r"background \(pid (\d+)\)", log_file.read_text()),
            message="background pid in the log",
        ).group(1)
    )
    try:
        hub_key = spoke.create_hub()
        spoke.wait_hub_peer(hub_key)
        os.kill(pid, 0)  # still running
    finally:
        os.kill(pid, signal.SIGTERM)


def test_every_variable_of_the_original_script_is_a_setting(spoke: SpokeHarness) -> None:
    proc = Process(["spoke", "--help"], env=spoke.env(), log_path=spoke.tmp / "help.log")
    assert proc.exit_code() == 0
    for name in [
        "KUBECONFIG",
        "NODE_NAME",
        "WG_INTERFACE",
        "WG_ADDRESS",
        "WG_LISTEN_PORT",
        "WG_ALLOWED_IPS",
        "HUB_ALLOWED_IPS",
        "ANNOTATION_PREFIX",
        "POLL_INTERVAL",
        "WG_DAEMONIZE",
        "WG_LOG_FILE",
        "WG_PRIVATE_KEY_FILE",
        "WG_ENDPOINT",
        "WG_PERSISTENT_KEEPALIVE",
        "WG_BACKEND",
        "HUB_DISCOVERY",
        "HUB_PUBLIC_KEY",
    ]:
        assert f"[env {name}]" in " ".join(proc.log.split()), name

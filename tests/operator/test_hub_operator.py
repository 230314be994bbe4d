"""The real hub operator process against the API, programming a memory kernel."""

from __future__ import annotations

import stat
import time
import urllib.request

import pytest

from tests.operator.conftest import HUB, PREFIX, HubHarness, new_key, peer_labels
from wgkube.domain.keys import PrivateKey
from wgkube.testing.apiserver import wait_for


def annotations_of(hub: HubHarness, node: str) -> dict[str, str]:
    body = hub.api.get("nodes", node) or {}
    return dict(body.get("metadata", {}).get("annotations") or {})


class TestStartUp:
    def test_it_labels_its_node_and_publishes_key_endpoint_and_allowed_ips(
        self, hub: HubHarness
    ) -> None:
        hub.start()
        node = hub.api.get("nodes", HUB) or {}
        meta = node["metadata"]
        assert meta["labels"][PREFIX + "hub"] == "true"
        key = PrivateKey.parse((hub.key_dir / "wg0.key").read_text())
        assert meta["annotations"][PREFIX + "public-key"] == key.public_key().b64
        assert meta["annotations"][PREFIX + "endpoint"] == "203.0.113.1:51820"
        assert meta["annotations"][PREFIX + "allowed-ips"] == "100.96.0.1/32"
        device = hub.device.device()
        assert device is not None
        assert device["addresses"] == ["100.96.0.1/32"]
        assert device["listen_port"] == 51820
        assert device["private_key"] == key.b64
        url = f"http://127.0.0.1:{hub.probe_port}/healthz"
        with urllib.request.urlopen(url) as answer:
            assert answer.read() == b"ok\n"
        wait_for(lambda: hub.readiness()["ready"], message="/readyz says ready")

    def test_flags_override_endpoint_address_port_and_allowed_ips(self, hub: HubHarness) -> None:
        hub.start(
            "--endpoint",
            "198.51.100.7",
            "--listen-port",
            "51999",
            "--address",
            "100.96.0.1/24",
            "--allowed-ips",
            "100.96.0.0/24,10.20.0.0/16",
        )
        ann = annotations_of(hub, HUB)
        assert ann[PREFIX + "endpoint"] == "198.51.100.7:51999"
        assert ann[PREFIX + "allowed-ips"] == "10.20.0.0/16,100.96.0.0/24"
        assert (hub.device.device() or {})["listen_port"] == 51999

    def test_an_ipv6_external_ip_is_published_in_brackets(self, hub: HubHarness) -> None:
        hub.api.create_node("hub-6", addresses={"ExternalIP": "2001:db8::1"})
        hub.start(node="hub-6")
        assert annotations_of(hub, "hub-6")[PREFIX + "endpoint"] == "[2001:db8::1]:51820"

    def test_without_external_ip_or_override_it_says_so_and_publishes_none(
        self, hub: HubHarness
    ) -> None:
        hub.api.create_node("hub-private", addresses={"InternalIP": "10.9.9.9"})
        proc = hub.start(node="hub-private")
        assert "has no ExternalIP and no --endpoint" in proc.log
        assert PREFIX + "endpoint" not in annotations_of(hub, "hub-private")

    def test_it_reasserts_its_label_and_follows_a_new_external_ip(self, hub: HubHarness) -> None:
        hub.start()
        hub.api.patch_node(
            HUB,
            {
                "metadata": {
                    "labels": {PREFIX + "hub": None},
                    "annotations": {PREFIX + "public-key": None},
                }
            },
        )
        wait_for(
            lambda: PREFIX + "public-key" in annotations_of(hub, HUB),
            message="the hub's annotations re-asserted",
        )
        assert (hub.api.get("nodes", HUB) or {})["metadata"]["labels"][PREFIX + "hub"] == "true"
        hub.api.patch_node(
            HUB,
            {"status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.99"}]}},
            status=True,
        )
        wait_for(
            lambda: annotations_of(hub, HUB)[PREFIX + "endpoint"] == "203.0.113.99:51820",
            message="the endpoint follows the new ExternalIP",
        )

    def test_the_key_is_created_0600_and_kept_across_restarts(self, hub: HubHarness) -> None:
        hub.start().stop()
        key_file = hub.key_dir / "wg0.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        first = key_file.read_text()
        hub.start()
        assert key_file.read_text() == first
        assert annotations_of(hub, HUB)[PREFIX + "public-key"] == (
            PrivateKey.parse(first).public_key().b64
        )

    def test_a_malformed_key_file_is_fatal_and_never_replaced(self, hub: HubHarness) -> None:
        hub.key_dir.mkdir()
        (hub.key_dir / "wg0.key").write_text("not a key\n")
        proc = hub.start(wait_ready=False)
        assert proc.exit_code() == 1
        assert "private key file" in proc.log
        assert "malformed" in proc.log
        assert (hub.key_dir / "wg0.key").read_text() == "not a key\n"
        assert hub.device.device() is None

    def test_bad_flags_give_a_clear_error(self, hub: HubHarness) -> None:
        proc = hub.start("--address", "100.96.0.300/32", wait_ready=False)
        assert proc.exit_code() == 2
        assert "--address / WG_ADDRESS" in proc.log


class TestPeers:
    def test_peers_are_added_changed_unlabelled_and_deleted_leaving_others_alone(
        self, hub: HubHarness
    ) -> None:
        a, b, c = new_key(), new_key(), new_key()
        hub.create_peer("spoke-a", a, "100.96.0.2/32", endpoint="198.51.100.2:51820")
        hub.create_peer("spoke-b", b, "100.96.0.3/32,10.1.0.0/24")
        hub.start()
        peers = hub.wait_peers({a, b})
        assert peers[a]["endpoint"] == "198.51.100.2:51820"
        assert peers[b]["endpoint"] is None
        assert hub.device.routes() == {"100.96.0.2/32", "100.96.0.3/32", "10.1.0.0/24"}

        hub.api.patch_node(
            "spoke-b", {"metadata": {"annotations": {PREFIX + "allowed-ips": "100.96.0.3/32"}}}
        )
        wait_for(
            lambda: hub.device.peers()[b]["allowed_ips"] == ["100.96.0.3/32"],
            message="spoke-b's allowed-ips replaced",
        )
        wait_for(lambda: "10.1.0.0/24" not in hub.device.routes(), message="stale route removed")
        assert hub.device.peers()[a] == peers[a]

        hub.create_peer("spoke-c", c, "100.96.0.4/32")
        hub.wait_peers({a, b, c})

        hub.api.patch_node("spoke-a", {"metadata": {"labels": {PREFIX + "peer": None}}})
        hub.wait_peers({b, c})
        assert "100.96.0.2/32" not in hub.device.routes()

        hub.api.delete_node("spoke-c")
        hub.wait_peers({b})
        assert hub.device.routes() == {"100.96.0.3/32"}
        assert (hub.device.device() or {})["addresses"] == ["100.96.0.1/32"]

    def test_allowed_ips_default_to_the_internal_ip(self, hub: HubHarness) -> None:
        key = new_key()
        hub.create_peer("spoke-d", key, internal_ip="10.0.7.7")
        hub.start()
        assert hub.wait_peers({key})[key]["allowed_ips"] == ["10.0.7.7/32"]

    def test_a_peer_without_endpoint_keeps_the_endpoint_wireguard_learned(
        self, hub: HubHarness
    ) -> None:
        roaming, other = new_key(), new_key()
        hub.create_peer("roamer", roaming, "100.96.0.2/32")
        hub.start("--resync-interval", "0.5")
        hub.wait_peers({roaming})

        def learn(device: dict[str, object]) -> None:
            device["peers"][roaming]["endpoint"] = "192.0.2.50:40000"  # type: ignore[index]

        hub.device.edit(learn)
        hub.create_peer("other", other, "100.96.0.3/32")
        hub.wait_peers({roaming, other})
        writes = hub.device.writes
        hub.wait_reconciles(3)  # resyncs every 0.5 s
        assert hub.device.writes == writes
        assert hub.device.peers()[roaming]["endpoint"] == "192.0.2.50:40000"

    def test_a_published_endpoint_change_is_applied(self, hub: HubHarness) -> None:
        key = new_key()
        hub.create_peer("spoke-e", key, "100.96.0.2/32", endpoint="198.51.100.2:51820")
        hub.start()
        hub.wait_peers({key})
        hub.api.patch_node(
            "spoke-e", {"metadata": {"annotations": {PREFIX + "endpoint": "[2001:db8::2]:51821"}}}
        )
        wait_for(
            lambda: hub.device.peers()[key]["endpoint"] == "[2001:db8::2]:51821",
            message="endpoint followed",
        )

    def test_kopf_writes_nothing_onto_nodes(self, hub: HubHarness) -> None:
        key = new_key()
        hub.create_peer("spoke-f", key, "100.96.0.2/32")
        before = hub.api.get("nodes", "spoke-f") or {}
        hub.start()
        hub.wait_peers({key})
        hub.api.patch_node(
            "spoke-f", {"metadata": {"annotations": {PREFIX + "allowed-ips": "100.96.0.5/32"}}}
        )
        wait_for(lambda: hub.device.peers()[key]["allowed_ips"] == ["100.96.0.5/32"])
        after = hub.api.get("nodes", "spoke-f") or {}
        assert not after["metadata"].get("finalizers")
        assert set(after["metadata"]["annotations"]) == set(before["metadata"]["annotations"])
        assert set(after["metadata"].get("labels") or {}) == set(peer_labels())
        hub_meta = (hub.api.get("nodes", HUB) or {})["metadata"]
        assert not hub_meta.get("finalizers")
        assert all(k.startswith(PREFIX) for k in hub_meta.get("annotations", {}))


class TestBadInput:
    def test_each_fault_is_an_event_on_its_node_and_only_that_peer_is_skipped(
        self, hub: HubHarness
    ) -> None:
        good, dup, older_overlap = new_key(), new_key(), new_key()
        hub.create_peer("good", good, "100.96.0.2/32")
        hub.create_peer("bad-key", "not-a-key", "100.96.0.3/32")
        hub.create_peer("bad-cidr", new_key(), "10.0.0.1/24")
        hub.create_peer("bad-endpoint", new_key(), "100.96.0.4/32", endpoint="example.com:51820")
        hub.create_peer("dup-old", dup, "100.96.0.5/32")
        hub.create_peer("overlap-old", older_overlap, "10.50.0.0/16")
        hub.start()
        time.sleep(1.1)  # creationTimestamp has one-second resolution: make "new" newer
        hub.create_peer("dup-new", dup, "100.96.0.6/32")
        hub.create_peer("overlap-new", new_key(), "10.50.1.0/24")
        hub.create_peer("hub-address", new_key(), "100.96.0.0/24")

        for node, reason, words in [
            ("bad-key", "InvalidPeerConfig", PREFIX + "public-key"),
            ("bad-cidr", "InvalidPeerConfig", "host bits"),
            ("bad-endpoint", "InvalidPeerConfig", "DNS names are not accepted"),
            ("dup-new", "PeerConflict", "already used by node 'dup-old'"),
            ("overlap-new", "PeerConflict", "overlaps node 'overlap-old'"),
            ("hub-address", "PeerConflict", "the hub's own address"),
        ]:
            event = hub.wait_event(node, reason)
            assert event["type"] == "Warning"
            assert words in event["message"], (node, event["message"])
            assert node in hub.processes[-1].log
        peers = hub.wait_peers({good, dup, older_overlap})
        assert peers[dup]["allowed_ips"] == ["100.96.0.5/32"]

    def test_fixing_the_annotation_brings_the_peer_in_without_restart(
        self, hub: HubHarness
    ) -> None:
        key = new_key()
        hub.create_peer("typo", key, "10.0.0.1/24")
        proc = hub.start()
        hub.wait_event("typo", "InvalidPeerConfig")
        hub.api.patch_node(
            "typo", {"metadata": {"annotations": {PREFIX + "allowed-ips": "10.0.0.0/24"}}}
        )
        assert hub.wait_peers({key})[key]["allowed_ips"] == ["10.0.0.0/24"]
        assert proc.proc.poll() is None

    def test_the_same_fault_is_reported_once_not_on_every_resync(self, hub: HubHarness) -> None:
        hub.create_peer("bad", "xyz", "100.96.0.9/32")
        proc = hub.start("--resync-interval", "0.3")
        hub.wait_event("bad", "InvalidPeerConfig")
        hub.wait_reconciles(3)  # resyncs every 0.3 s
        assert len(hub.events("bad")) == 1
        assert proc.log.count("peer bad skipped") == 1


class TestRestartAndFaults:
    def test_a_restart_with_many_peers_adopts_them_with_zero_writes(self, hub: HubHarness) -> None:
        keys = [new_key() for _ in range(150)]
        for i, key in enumerate(keys):
            hub.create_peer(f"spoke-{i:03}", key, f"100.96.{1 + i // 200}.{i % 200 + 1}/32")
        first = hub.start()
        hub.wait_peers(set(keys), timeout=30)
        assert first.stop() == 0
        writes = hub.device.writes
        second = hub.start()
        second.wait_log("reconciled: 150 peer(s), 0 rejected, 0 change(s)")
        assert hub.device.writes == writes
        assert "applying" not in second.log

    def test_an_api_outage_leaves_the_kernel_untouched_and_resync_follows(
        self, hub: HubHarness, emulator: object
    ) -> None:
        a, b = new_key(), new_key()
        hub.create_peer("spoke-a", a, "100.96.0.2/32")
        proc = hub.start("--resync-interval", "0.5")
        hub.wait_peers({a})
        writes = hub.device.writes
        with hub.api.controls.unavailable():  # type: ignore[union-attr]
            wait_for(lambda: "cannot list Nodes" in proc.log, timeout=10, message="outage seen")
            assert hub.device.writes == writes
            assert set(hub.device.peers()) == {a}
        hub.create_peer("spoke-b", b, "100.96.0.3/32")
        hub.wait_peers({a, b}, timeout=20)

    def test_drift_made_by_hand_is_repaired_on_resync(self, hub: HubHarness) -> None:
        a = new_key()
        hub.create_peer("spoke-a", a, "100.96.0.2/32")
        hub.start("--resync-interval", "0.5")
        hub.wait_peers({a})

        def tamper(device: dict[str, object]) -> None:
            device["routes"] = []
            device["peers"] = {}

        hub.device.edit(tamper)
        hub.wait_peers({a})
        wait_for(lambda: hub.device.routes() == {"100.96.0.2/32"}, message="route restored")


@pytest.mark.parametrize("prefix", ["example.org/"])
def test_a_custom_prefix_is_used_for_every_label_and_annotation(
    hub: HubHarness, prefix: str
) -> None:
    key = new_key()
    hub.api.create_node(
        "custom",
        labels={prefix + "peer": "true"},
        annotations={prefix + "public-key": key, prefix + "allowed-ips": "100.96.0.2/32"},
    )
    hub.create_peer("default-prefix", new_key(), "100.96.0.3/32")
    hub.start("--annotation-prefix", prefix)
    hub.wait_peers({key})
    meta = (hub.api.get("nodes", HUB) or {})["metadata"]
    assert meta["labels"][prefix + "hub"] == "true"
    assert prefix + "public-key" in meta["annotations"]

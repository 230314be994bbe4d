"""`kopf run -m wgkube.operator.dev`: the same hub under Kopf's own CLI, for development."""

from __future__ import annotations

from tests.operator.conftest import HUB, PREFIX, HubHarness, new_key
from tests.support.procs import Process, base_env
from wgkube.testing.apiserver import RequestRecord, wait_for


def test_kopf_run_serves_the_hub_from_environment_settings(hub: HubHarness) -> None:
    key = new_key()
    hub.create_peer("spoke-a", key, "100.96.0.2/32")
    env = base_env(
        KUBECONFIG=str(hub.api.kubeconfig),
        NODE_NAME=HUB,
        WG_BACKEND="memory",
        WGKUBE_MEMORY_STATE=str(hub.device.path),
        WG_KEY_DIR=str(hub.key_dir),
        WG_PROBE_ADDRESS="",
        WG_DEBOUNCE="0.05",
    )
    proc = Process(
        ["run", "--standalone", "--all-namespaces", "-m", "wgkube.operator.dev"],
        env=env,
        log_path=hub.tmp / "kopf-run.log",
        module="kopf",
    )
    hub.processes.append(proc)
    assert hub.wait_peers({key})[key]["allowed_ips"] == ["100.96.0.2/32"]
    wait_for(
        lambda: (hub.api.get("nodes", HUB) or {})["metadata"].get("labels", {}).get(PREFIX + "hub"),
        message="the hub label",
    )

    controls = hub.api.controls
    if controls is not None:  # the emulator's request log (the real server keeps none)
        # As in `wg-kube hub`: the peer Nodes are listed once (the registry's first list)
        # and watched from it with the peer selector; Kopf reads the hub's own Node alone.
        def node_reads() -> list[RequestRecord]:
            return [
                r
                for r in controls.requests
                if r.resource == "nodes" and r.verb in ("list", "watch")
            ]

        wait_for(
            lambda: (
                {"list", "watch"} <= {r.verb for r in node_reads() if r.query.get("labelSelector")}
            ),
            message="the hub's list and watch of the peer Nodes",
        )
        peer_reads = [r for r in node_reads() if "fieldSelector" not in r.query]
        assert {r.query.get("labelSelector") for r in peer_reads} == {PREFIX + "peer=true"}
        assert [r.verb for r in peer_reads if r.verb == "list" and "continue" not in r.query] == [
            "list"
        ], "one list of the peer Nodes at start"
        own_reads = [r for r in node_reads() if "fieldSelector" in r.query]
        assert own_reads, "Kopf reads the hub's own Node"
        assert {r.query["fieldSelector"] for r in own_reads} == {f"metadata.name={HUB}"}
    assert proc.stop() == 0

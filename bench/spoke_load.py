"""One spoke agent's load on the API server, counted from the API emulator's request log.

Per N: the emulator (in this process) holds N kubelet-sized peer Nodes, a hub Node and
the announcement ConfigMap; one `wg-kube spoke` (memory backend, authenticated as
system:node:<name>) starts, takes its hub, and then runs for a steady-state window while
other Nodes change. Every request it makes is in the emulator's log: lists of Nodes (the
target: never), watches, and the steady-state request rate, which must not grow with N.

    python -m bench.spoke_load [--sizes 100,10000] [--steady 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import PREFIX, child_env, log, make_peers, peer_node, stop_process, wait_until
from wgkube.domain import announcement
from wgkube.domain.annotations import HubRecord
from wgkube.domain.keys import PrivateKey, PublicKey
from wgkube.domain.net import Endpoint, parse_networks
from wgkube.testing.apiserver import EmulatedApiServer, RequestRecord

SPOKE = "spoke-load-0"
USER = f"system:node:{SPOKE}"
HUB = "hub-load"
HUB_ENDPOINT = "203.0.113.1:51820"
CHURN = 20
"""Other Nodes patched during the steady-state window: a spoke must not see them."""


def _kind(r: RequestRecord) -> str:
    what = r.resource or r.path
    if r.name is not None or "fieldSelector" in r.query:
        what += "/one"  # by name, or a watch of one object by field selector
    return f"{r.verb} {what}"


def _node_lists(records: Sequence[RequestRecord]) -> int:
    """Lists or watches of Nodes that are not of one Node by name."""
    return sum(
        1
        for r in records
        if r.resource == "nodes"
        and r.verb in ("list", "watch")
        and r.name is None
        and "fieldSelector" not in r.query
    )


def measure(n: int, steady_s: float, work: Path) -> dict[str, Any]:
    with EmulatedApiServer(history_size=max(1000, 2 * n)) as api:
        ns = announcement.NAMESPACE
        api.create(
            "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        hub_key = PrivateKey.generate().public_key().b64
        api.create_node(
            HUB,
            labels={PREFIX + "hub": "true"},
            annotations={
                PREFIX + "public-key": hub_key,
                PREFIX + "allowed-ips": "100.96.0.1/32",
                PREFIX + "endpoint": HUB_ENDPOINT,
            },
        )
        record = HubRecord(
            node=HUB,
            public_key=PublicKey.parse(hub_key),
            endpoint=Endpoint.parse(HUB_ENDPOINT),
            allowed_ips=parse_networks("100.96.0.1/32"),
        )
        api.create(
            "configmaps",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": announcement.NAME},
                "data": announcement.encode([record]),
            },
            namespace=ns,
        )
        peers = make_peers(n)
        started = time.perf_counter()
        for i, peer in enumerate(peers):
            api.create("nodes", peer_node(peer, i))
        created_s = time.perf_counter() - started
        api.create_node(SPOKE, addresses={"InternalIP": "10.0.0.2"})
        state = work / f"spoke-{n}.json"
        log_path = work / f"spoke-{n}.log"
        env = child_env(
            KUBECONFIG=str(api.kubeconfig_for(USER)),
            NODE_NAME=SPOKE,
            WG_ADDRESS="100.96.0.2/32",
            WG_BACKEND="memory",
            WG_PRIVATE_KEY_FILE=str(work / f"spoke-{n}.key"),
            WGKUBE_MEMORY_STATE=str(state),
        )
        api.clear_requests()
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wgkube", "spoke"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(
                lambda: (
                    (state.exists() and hub_key in state.read_text()) or proc.poll() is not None
                ),
                timeout=120,
                what="the spoke's hub peer",
            )
            if proc.poll() is not None:
                raise RuntimeError(f"the spoke exited:\n{log_path.read_text()[-3000:]}")
            time.sleep(2.0)  # its first status writes after the tunnel is configured
            mine = [r for r in api.requests if r.user == USER]
            mark = len(api.requests)
            for i, peer in enumerate(peers[:CHURN]):
                patch = {"metadata": {"annotations": {PREFIX + "allowed-ips": f"10.99.{i}.0/24"}}}
                api.patch_node(peer.name, patch)
            time.sleep(steady_s)
            steady = [r for r in api.requests[mark:] if r.user == USER]
        finally:
            stop_process(proc)
    return {
        "n": n,
        "create_s": created_s,
        "steady_s": steady_s,
        "start_requests": dict(Counter(_kind(r) for r in mine)),
        "steady_requests": dict(Counter(_kind(r) for r in steady)),
        "steady_per_min": len(steady) * 60.0 / steady_s,
        "node_lists": _node_lists(mine) + _node_lists(steady),
        "watches": sorted({_kind(r) for r in mine + steady if r.verb == "watch"}),
    }


def run(sizes: Sequence[int], steady_s: float = 30.0) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="wgkube-bench-spoke-") as tmp:
        for n in sizes:
            log(f"spoke API load, N={n}")
            try:
                results.append(measure(n, steady_s, Path(tmp)))
            except Exception as exc:  # a figure that failed is reported, not hidden
                results.append({"n": n, "status": "failed", "error": f"{exc}"[:2000]})
    measured = [r for r in results if "steady_per_min" in r]
    met: bool | None = None
    if len(measured) == len(results) and measured:
        rates = [r["steady_per_min"] for r in measured]
        met = all(r["node_lists"] == 0 for r in measured) and max(rates) <= min(rates) + 2
    return {
        "definition": "requests of one `wg-kube spoke` (memory backend, system:node identity) "
        "in the API emulator's log: from its start to its hub peer + 2 s, then a steady-state "
        f"window while {CHURN} other Nodes change",
        "results": results,
        "met": met,
    }


def lines(result: dict[str, Any]) -> list[str]:
    out = ["", "7. Spoke agent's API load (API emulator's request log, one spoke)"]
    for r in result["results"]:
        if "steady_per_min" not in r:
            out.append(f"   N={r['n']}: NOT MEASURED: {r.get('error')}")
            continue
        out.append(
            f"   N={r['n']:<6} start: {r['start_requests']}; steady "
            f"{r['steady_per_min']:.1f}/min {r['steady_requests']}; watches {r['watches']}; "
            f"lists of Nodes {r['node_lists']}"
        )
    verdict = "MET    " if result.get("met") else "NOT MET"
    measured = [r for r in result["results"] if "steady_per_min" in r]
    summary = ", ".join(
        f"N={r['n']}: {r['steady_per_min']:.1f} req/min, {r['node_lists']} Node lists"
        for r in measured
    )
    out.append(
        f"   [{verdict}] spoke agent's API load O(1): target one watch on the announcement, "
        f"never a list of Nodes, a steady rate independent of N; measured {summary or '-'}"
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spoke_load")
    parser.add_argument("--sizes", default="100,10000")
    parser.add_argument("--steady", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run([int(s) for s in args.sizes.split(",")], args.steady)
    print("\n".join(lines(result)))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result.get("met") is not None else 1


if __name__ == "__main__":
    sys.exit(main())

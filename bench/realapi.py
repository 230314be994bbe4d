"""The N-peer scenarios against the real kube-apiserver (and etcd) from `make controlplane`.

    .venv/bin/python -m bench.realapi --peers 10000 [--json OUT]     (as root)

Part of `make bench` (bench.run calls `run`). The control plane, the hub and its
wireguard-go device run in one throw-away network namespace, as the host suite does, with
Nodes as kubelets write them (bench.common.peer_node, ~4 KB each):
  create    N Nodes created over HTTPS (8 in flight), no hub running
  converge  hub spawn, N Nodes in the API -> all N peers and routes in the kernel;
            baseline = start wireguard-go + `wg set` key/port + one paginated LIST over
            HTTPS + one `wg set` of all peers + one `ip -batch` (bench.common)
  restart   the hub stopped and started -> /readyz ready; kernel writes seen from outside
            (route events + a `wg show dump` diff), watched 3 s past ready; floor = Python
            with the hub's imports + the LIST + one dump and route listing
  change    one Node's allowed-ips patched, quiet for more than a debounce before it ->
            its new route in the kernel (polled every ms)
  memory    VmHWM of each hub process
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import ssl
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    MOVED_BASE,
    PREFIX,
    HubProcess,
    RouteMonitor,
    RouteProbe,
    baseline_converge,
    delete_link,
    hub_node,
    json_in_netns,
    log,
    make_peers,
    median,
    peer_allowed,
    peer_node,
    peers_changed,
    route_count,
    summary,
    time_when,
    unique_ifname,
    wait_device,
    wg_dump,
    write_key,
)
from bench.common import run as run_command
from bench.host import wait_ready
from wgkube.testing.controlplane import ControlPlane, missing_binaries

TARGET_RATIO = 1.5
TARGET_MEMORY_MB = 150.0
TARGET_ISOLATED_S = 0.05
BUDGET_S = 1200.0
"""The whole part's wall-clock limit inside bench.run."""


@dataclass
class RealApi:
    """HTTPS to kube-apiserver as the admin (permissions are not what is measured)."""

    url: str
    token: str
    ca: Path
    kubeconfig: Path

    @classmethod
    def of(cls, plane: ControlPlane) -> RealApi:
        config = json.loads(plane.kubeconfig.read_text())
        token = str(config["users"][0]["user"]["token"])
        return cls(plane.url, token, plane.ca_file, plane.kubeconfig)

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    async def _session(self) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        return aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=self._ssl())
        )

    def create_nodes(self, bodies: Sequence[Mapping[str, Any]], concurrency: int = 8) -> float:
        async def go() -> float:
            started = time.perf_counter()
            todo = iter(bodies)
            async with await self._session() as session:

                async def worker() -> None:
                    for body in todo:
                        async with session.post(f"{self.url}/api/v1/nodes", json=body) as resp:
                            if resp.status >= 300:
                                raise RuntimeError(f"create: {resp.status} {await resp.text()}")
                            await resp.read()

                await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

        return asyncio.run(go())

    def list_peer_nodes(self, page: int = 500) -> list[dict[str, Any]]:
        """One paginated LIST of the peer Nodes (as the hub makes it)."""

        async def go() -> list[dict[str, Any]]:
            selector = urllib.parse.quote(f"{PREFIX}peer=true")
            items: list[dict[str, Any]] = []
            token = ""
            async with await self._session() as session:
                while True:
                    url = f"{self.url}/api/v1/nodes?labelSelector={selector}&limit={page}"
                    url += f"&continue={urllib.parse.quote(token)}" if token else ""
                    async with session.get(url) as resp:
                        data = await resp.json()
                    items += data.get("items") or []
                    token = (data.get("metadata") or {}).get("continue") or ""
                    if not token:
                        return items

        return asyncio.run(go())

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> float:
        """The patch; the perf_counter just before it was sent (its session made)."""
        sent = 0.0

        async def go() -> None:
            nonlocal sent
            session = await self._session()
            sent = time.perf_counter()
            async with (
                session,
                session.patch(
                    f"{self.url}/api/v1/nodes/{name}",
                    data=json.dumps(patch),
                    headers={"Content-Type": "application/merge-patch+json"},
                ) as resp,
            ):
                if resp.status >= 300:
                    raise RuntimeError(f"patch: {resp.status} {await resp.text()}")

        asyncio.run(go())
        return sent


def scenario(n: int, work: Path, changes: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n": n,
        "api": "kube-apiserver + etcd (make controlplane)",
        "backend": "userspace (wireguard-go), in a throw-away network namespace",
    }
    timeout = 120 + 0.05 * n
    with ControlPlane(workdir=work / "controlplane") as plane:
        api = RealApi.of(plane)
        plane.kubectl("create", "namespace", "wg-kube")
        api.create_nodes([hub_node()])
        peers = make_peers(n)
        log(f"real API, N={n}: creating {n} Nodes (no hub running)")
        out["create_s"] = api.create_nodes([peer_node(p, i) for i, p in enumerate(peers)])
        key = write_key(work / "baseline.key")
        baseline = []
        for _ in range(3):
            ifname = unique_ifname("wgrb")
            try:
                baseline.append(baseline_converge(api, ifname, key, 51900))  # type: ignore[arg-type]
                assert route_count(ifname) == n
            finally:
                delete_link(ifname)
        out["baseline_s"] = median(baseline)
        out["baseline_runs_s"] = baseline
        hub = HubProcess(work, api, unique_ifname("wgra"))  # type: ignore[arg-type]
        try:
            started = hub.start()
            done = wait_device(hub.ifname, n, timeout=timeout, alive=hub.check_alive)
            out["converge_s"] = done - started
            out["converge_ratio"] = out["converge_s"] / out["baseline_s"]
            wait_ready(hub, 60)
            log(f"real API, N={n}: converged in {out['converge_s']:.2f}s")
            out["memory_kib"] = {"converging hub": hub.memory_kib()}
            out.update(restart(api, hub, work, timeout))
            out["memory_kib"]["restarted hub (restart + changes)"] = {}
            out["isolated_change_s"] = changes_timed(api, hub, peers, changes)
            out["memory_kib"]["restarted hub (restart + changes)"] = hub.memory_kib()
        finally:
            hub.stop()
            delete_link(hub.ifname)
    peak = max(m.get("VmHWM", 0) for m in out["memory_kib"].values())
    out["peak_vmhwm_mb"] = peak * 1024 / 1e6
    log(f"real API, N={n}: {json.dumps({k: v for k, v in out.items() if 's' in k[-2:]})}")
    return out


def restart(api: RealApi, hub: HubProcess, work: Path, timeout: float) -> dict[str, Any]:
    """Stop the hub, start it again: ready, and the kernel writes it made (from outside)."""
    hub.stop(only_hub=True)
    started = time.perf_counter()
    run_command([sys.executable, "-c", "import wgkube.operator.main"])
    api.list_peer_nodes()
    wg_dump(hub.ifname)
    route_count(hub.ifname)
    floor = time.perf_counter() - started
    monitor = RouteMonitor(work)
    try:
        before = wg_dump(hub.ifname)
        mark = monitor.mark()
        started = hub.start()
        ready = wait_ready(hub, timeout)
        time.sleep(3.0)  # a late write would have landed by now
        routes = monitor.events(hub.ifname, mark)
        peers = peers_changed(before, wg_dump(hub.ifname))
    finally:
        monitor.close()
    return {
        "restart_ready_s": ready - started,
        "restart_floor_s": floor,
        "restart_ratio": (ready - started) / floor,
        "restart_kernel_ops": routes + peers,
        "restart_route_events": routes,
        "restart_peers_changed": peers,
        "restart_logged_ops": sum(hub.applied()),
    }


def changes_timed(
    api: RealApi, hub: HubProcess, peers: Sequence[Any], changes: int
) -> dict[str, Any]:
    """Isolated changes: each after a quiet debounce interval, timed to its route."""
    probe = RouteProbe()
    try:
        index = probe.index(hub.ifname)
        time.sleep(1.0)
        latencies = []
        for j in range(changes):
            new = peer_allowed(j, MOVED_BASE)
            address = new.split("/")[0]
            sent = api.patch_node(
                peers[j].name, {"metadata": {"annotations": {PREFIX + "allowed-ips": new}}}
            )
            done = time_when(
                functools.partial(probe.via, address, index), timeout=30, interval=0.001, what=new
            )
            latencies.append(done - sent)
            time.sleep(0.3)  # quiet for more than a debounce: the next one is isolated
        hub.check_alive()
        return {**summary(latencies), "raw_s": latencies}
    finally:
        probe.close()


# -- as a part of bench.run ---------------------------------------------------------------------


def run(peers: int = 10000, changes: int = 20) -> dict[str, Any]:
    """The scenario in a throw-away namespace (`ip netns exec ... bench.realapi --here`)."""
    if (why := missing_binaries()) is not None:
        return {"status": "not measured", "error": f"{why} (make controlplane)"}
    args = ["--here", "--peers", str(peers), "--changes", str(changes)]
    return json_in_netns("wgreal", "bench.realapi", args, BUDGET_S, "bench.realapi")


def targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for the real API part, each MET or NOT MET with its number."""
    n = result.get("n", 10000)
    where = f"real kube-apiserver, N={n}"
    if "converge_s" not in result:
        why = result.get("error") or "no result"
        return [
            {
                "name": f"{where}: every figure",
                "target": "measured",
                "measured": f"not measured: {why}",
                "met": False,
            }
        ]
    change = result["isolated_change_s"]
    peak = result["peak_vmhwm_mb"]
    return [
        {
            "name": f"{where}: hub start to all peers and routes",
            "target": f"<= {TARGET_RATIO:g}x the baseline",
            "measured": f"{result['converge_ratio']:.2f}x ({result['converge_s']:.2f}s vs "
            f"{result['baseline_s']:.2f}s)",
            "met": result["converge_ratio"] <= TARGET_RATIO,
        },
        {
            "name": f"{where}: restart, kernel writes (from outside, 3 s past ready)",
            "target": "0",
            "measured": f"{result['restart_kernel_ops']} "
            f"(the hub logged {result['restart_logged_ops']})",
            "met": result["restart_kernel_ops"] == 0,
        },
        {
            "name": f"{where}: restart, ready",
            "target": f"<= {TARGET_RATIO:g}x the floor (Python with the imports + LIST + one dump)",
            "measured": f"{result['restart_ratio']:.2f}x ({result['restart_ready_s']:.2f}s vs "
            f"{result['restart_floor_s']:.2f}s)",
            "met": result["restart_ratio"] <= TARGET_RATIO,
        },
        {
            "name": f"{where}: an isolated change, p50",
            "target": f"<= {TARGET_ISOLATED_S * 1000:.0f} ms",
            "measured": f"{change['p50'] * 1000:.0f} ms (max {change['max'] * 1000:.0f} ms, "
            f"{change['n']:.0f} changes)",
            "met": change["p50"] <= TARGET_ISOLATED_S,
        },
        {
            "name": f"{where}: hub peak RSS",
            "target": f"<= {TARGET_MEMORY_MB:g} MB",
            "measured": f"{peak:.0f} MB ("
            + ", ".join(
                f"{what} {m.get('VmHWM', 0) * 1024 / 1e6:.0f} MB"
                for what, m in result["memory_kib"].items()
            )
            + ")",
            "met": peak <= TARGET_MEMORY_MB,
        },
    ]


def lines(result: Mapping[str, Any]) -> list[str]:
    return [
        f"{t['name']}: {t['measured']} (target {t['target']})  {'MET' if t['met'] else 'NOT MET'}"
        for t in targets(result)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realapi")
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--here", action="store_true", help="run in this namespace (bench.run makes one)"
    )
    args = parser.parse_args(argv)
    result: dict[str, Any]
    if os.geteuid() != 0:
        print("bench.realapi: needs root (a network namespace, wireguard-go)", file=sys.stderr)
        return 2
    if not args.here:
        result = run(args.peers, args.changes)
    else:
        if (why := missing_binaries()) is not None:
            print(f"bench.realapi: {why}", file=sys.stderr)
            return 2
        from bench.run import environment

        env = environment()
        with tempfile.TemporaryDirectory(prefix="wgkube-realapi-") as tmp:
            result = {"environment": env, **scenario(args.peers, Path(tmp), args.changes)}
        result["environment"]["loadavg_end"] = list(os.getloadavg())
    text: str = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    if args.here:
        return 0
    print(text)
    print("\n".join(lines(result)))
    return 0 if "converge_s" in result else 1


if __name__ == "__main__":
    sys.exit(main())

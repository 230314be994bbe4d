"""The N-peer scenarios against the real kube-apiserver (and etcd) from `make controlplane`.

    .venv/bin/python -m bench.realapi --peers 10000 [--json OUT]

The kernel side is the memory backend (its state in a file): what is measured here is the
API side, with Nodes as kubelets write them (bench.common.peer_node, ~4 KB each):
  create    N Nodes created over HTTPS (8 in flight), no hub running: the baseline
  converge  hub spawn, N Nodes in the API -> all N peers and routes in the device state;
            floor = a Python process with the hub's imports + one paginated LIST of the
            peer Nodes over HTTPS (the apply itself is free for the memory backend)
  change    one Node's allowed-ips patched, quiet before it -> the device has it. Timed
            on a second hub whose memory device keeps no state file but appends each
            operation applied to a journal (WGKUBE_MEMORY_JOURNAL): a cost per change,
            not per N, as a kernel's is (the state file is rewritten whole per apply)
  restart   the hub stopped and started -> /readyz ready; writes = device state file
            rewritten or changed (from outside), watched 3 s past ready
  memory    the hub's VmHWM
No network namespace, no WireGuard: needs only the control-plane binaries
(WGKUBE_CONTROLPLANE_BIN).
"""

from __future__ import annotations

import argparse
import asyncio
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
    Peer,
    hub_node,
    log,
    make_peers,
    median,
    peer_allowed,
    peer_node,
    run,
    summary,
)
from bench.host import wait_ready
from wgkube.testing.controlplane import ControlPlane, missing_binaries

STATE_ENV = "WGKUBE_MEMORY_STATE"
JOURNAL_ENV = "WGKUBE_MEMORY_JOURNAL"


class Journal:
    """Reads a memory device's journal (one JSON line per operation) as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.peers: set[str] = set()
        self.routes: set[str] = set()

    def read(self) -> list[dict[str, Any]]:
        """The operations appended since the last read (whole lines only)."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        ops = [json.loads(line) for line in data[:end].splitlines() if line]
        for op in ops:
            if op["op"] == "UpsertPeer":
                self.peers.add(op["public_key"])
            elif op["op"] == "RemovePeer":
                self.peers.discard(op["public_key"])
            elif op["op"] == "AddRoute":
                self.routes.add(op["destination"])
            elif op["op"] == "RemoveRoute":
                self.routes.discard(op["destination"])
        return ops


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

    def list_peers(self, page: int = 500) -> int:
        """One paginated LIST of the peer Nodes (as the hub does it); how many."""

        async def go() -> int:
            selector = urllib.parse.quote(f"{PREFIX}peer=true")
            count, token = 0, ""
            async with await self._session() as session:
                while True:
                    url = f"{self.url}/api/v1/nodes?labelSelector={selector}&limit={page}"
                    url += f"&continue={urllib.parse.quote(token)}" if token else ""
                    async with session.get(url) as resp:
                        data = await resp.json()
                    count += len(data.get("items") or [])
                    token = (data.get("metadata") or {}).get("continue") or ""
                    if not token:
                        return count

        return asyncio.run(go())

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> None:
        async def go() -> None:
            async with (
                await self._session() as session,
                session.patch(
                    f"{self.url}/api/v1/nodes/{name}",
                    data=json.dumps(patch),
                    headers={"Content-Type": "application/merge-patch+json"},
                ) as resp,
            ):
                if resp.status >= 300:
                    raise RuntimeError(f"patch: {resp.status} {await resp.text()}")

        asyncio.run(go())


def device(path: Path, ifname: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    result: dict[str, Any] = data.get("devices", {}).get(ifname, {})
    return result


def wait_state(path: Path, ifname: str, peers: int, timeout: float, hub: HubProcess) -> float:
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        dev = device(path, ifname)
        if len(dev.get("peers", {})) == peers and len(dev.get("routes", [])) == peers:
            return now
        hub.check_alive()
        if now > deadline:
            raise TimeoutError(f"{len(dev.get('peers', {}))} peers after {timeout:.0f}s")
        time.sleep(0.2)


def scenario(n: int, work: Path, changes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "api": "kube-apiserver + etcd (make controlplane)"}
    with ControlPlane(workdir=work / "controlplane") as plane:
        api = RealApi.of(plane)
        plane.kubectl("create", "namespace", "wg-kube")
        api.create_nodes([hub_node()])
        peers = make_peers(n)
        log(f"real API, N={n}: creating {n} Nodes (no hub running)")
        out["create_s"] = api.create_nodes([peer_node(p, i) for i, p in enumerate(peers)])
        floor_runs = []
        for _ in range(3):
            started = time.perf_counter()
            run([sys.executable, "-c", "import wgkube.operator.main"])
            assert api.list_peers() == n
            floor_runs.append(time.perf_counter() - started)
        out["floor_s"] = median(floor_runs)
        state = work / "device.json"
        os.environ[STATE_ENV] = str(state)
        hub = HubProcess(work, api, "wgreal", backend="memory")  # type: ignore[arg-type]
        try:
            started = hub.start()
            done = wait_state(state, hub.ifname, n, 120 + 0.05 * n, hub)
            out["converge_s"] = done - started
            out["converge_ratio"] = out["converge_s"] / out["floor_s"]
            wait_ready(hub, 60)
            log(f"real API, N={n}: converged in {out['converge_s']:.2f}s")
            out["memory_kib"] = hub.memory_kib()
            hub.stop(only_hub=True)
            before = (state.stat().st_mtime_ns, state.read_bytes())
            started = hub.start()
            ready = wait_ready(hub, 120 + 0.02 * n)
            out["restart_ready_s"] = ready - started
            out["restart_ratio"] = out["restart_ready_s"] / out["floor_s"]
            time.sleep(3.0)
            after = (state.stat().st_mtime_ns, state.read_bytes())
            out["restart_state_rewritten"] = after[0] != before[0]
            out["restart_state_changed"] = after[1] != before[1]
            out["restart_memory_kib"] = hub.memory_kib()
        finally:
            hub.stop()
        out["change_backend"] = (
            "memory device with an append-only journal (WGKUBE_MEMORY_JOURNAL), no state file"
        )
        out["isolated_change_s"] = changes_timed(api, peers, work, changes)
    log(f"real API, N={n}: {json.dumps({k: v for k, v in out.items() if 's' in k[-2:]})}")
    return out


def changes_timed(api: RealApi, peers: Sequence[Peer], work: Path, changes: int) -> Any:
    """Isolated changes on a hub whose device costs O(1) per change (see Journal)."""
    journal = Journal(work / "device.journal")
    os.environ.pop(STATE_ENV, None)
    os.environ[JOURNAL_ENV] = str(journal.path)
    hub = HubProcess(work, api, "wgrealj", backend="memory")  # type: ignore[arg-type]
    n = len(peers)
    try:
        hub.start()
        deadline = time.perf_counter() + 120 + 0.05 * n
        while len(journal.peers) < n or len(journal.routes) < n:
            journal.read()
            hub.check_alive()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"journal hub: {len(journal.peers)} peers")
            time.sleep(0.2)
        wait_ready(hub, 60)
        log(f"real API, N={n}: the journal hub converged; timing {changes} isolated changes")
        time.sleep(1.0)
        latencies = []
        for j in range(changes):
            new = peer_allowed(j, MOVED_BASE)
            journal.read()
            t0 = time.perf_counter()
            api.patch_node(
                peers[j].name, {"metadata": {"annotations": {PREFIX + "allowed-ips": new}}}
            )
            while not any(
                op["op"] == "AddRoute" and op["destination"] == new for op in journal.read()
            ):
                if time.perf_counter() - t0 > 30:
                    raise TimeoutError(f"change {j} not applied")
                time.sleep(0.002)
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.3)  # quiet for more than a debounce: the next one is isolated
        return {**summary(latencies), "raw_s": latencies}
    finally:
        hub.stop()
        os.environ.pop(JOURNAL_ENV, None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realapi")
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if (why := missing_binaries()) is not None:
        print(f"bench.realapi: {why}", file=sys.stderr)
        return 2
    from bench.run import environment

    env = environment()
    with tempfile.TemporaryDirectory(prefix="wgkube-realapi-") as tmp:
        result = {"environment": env, **scenario(args.peers, Path(tmp), args.changes)}
    result["environment"]["loadavg_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

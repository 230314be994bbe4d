"""The cost of one /metrics scrape at N peers, next to one raw device dump (same run).

    .venv/bin/python -m bench.scrape [--peers 5000] [--runs 5] [--json FILE]

A wireguard-go device with N peers (each with a handshake-less endpoint and one
allowed IP) in a throw-away network namespace; `baseline` is one dump of its peers
through the kernel port (UAPI `get=1` and parsing), `ours` the whole scrape (that same
dump, the health states, rendering every series). Target: a scrape under 1 s at 5000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import log
from wgkube.desired.health import Thresholds
from wgkube.diff.model import ConfigureDevice, CreateLink, Operation, UpsertPeer
from wgkube.domain.keys import PrivateKey
from wgkube.domain.net import Endpoint, parse_networks
from wgkube.kernel.userspace import UserspaceKernel
from wgkube.observe.book import HealthBook
from wgkube.observe.metrics import Metrics
from wgkube.testing.netns import create_netns, delete_netns

TARGET_S = 1.0
IFNAME = "wgbscrape0"


async def measure(peers: int, runs: int) -> dict[str, Any]:
    ns = create_netns("wgbench")
    kernel = UserspaceKernel(netns=ns.name)
    try:
        keys = [PrivateKey.generate().public_key() for _ in range(peers)]
        ops: list[Operation] = [
            CreateLink(IFNAME),
            ConfigureDevice(private_key=PrivateKey.generate(), listen_port=51820),
        ]
        for i, key in enumerate(keys):
            ops.append(
                UpsertPeer(
                    key,
                    Endpoint.parse(f"198.18.{i // 250}.{i % 250 + 1}:51820"),
                    parse_networks(f"100.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32"),
                    new=True,
                )
            )
        await kernel.apply(IFNAME, ops)
        names = {key: f"node-{i}" for i, key in enumerate(keys)}
        metrics = Metrics(kernel, IFNAME, "hub", HealthBook(Thresholds()), names=lambda: names)
        raw, ours, size = [], [], 0
        for _ in range(runs):
            started = time.perf_counter()
            dumped = await kernel.peers(IFNAME)
            raw.append(time.perf_counter() - started)
            if dumped is None or len(dumped) != peers:
                raise RuntimeError(f"the dump has {len(dumped or {})} peers, not {peers}")
            started = time.perf_counter()
            body = await metrics.scrape()
            ours.append(time.perf_counter() - started)
            size = len(body)
        scrape_s = statistics.median(ours)
        dump_s = statistics.median(raw)
        return {
            "peers": peers,
            "runs": runs,
            "scrape_s": scrape_s,
            "dump_s": dump_s,
            "ratio": scrape_s / dump_s,
            "scrape_runs_s": ours,
            "dump_runs_s": raw,
            "bytes": size,
            "target_s": TARGET_S,
            "met": scrape_s < TARGET_S,
        }
    finally:
        await kernel.delete(IFNAME)
        await kernel.close()
        delete_netns(ns)


def line(result: dict[str, Any]) -> str:
    if "scrape_s" not in result:
        return f"/metrics scrape: not measured ({result.get('error')})  NOT MET"
    verdict = "MET" if result["met"] else "NOT MET"
    return (
        f"/metrics scrape at N={result['peers']}: {result['scrape_s']:.3f}s "
        f"(one raw dump {result['dump_s']:.3f}s, {result['ratio']:.1f}x; "
        f"{result['bytes'] / 1e6:.1f} MB) target < {TARGET_S:g}s  {verdict}"
    )


def run(peers: int = 5000, runs: int = 5) -> dict[str, Any]:
    """For bench.run: the measurement, or why it failed."""
    try:
        return asyncio.run(measure(peers, runs))
    except Exception as exc:  # a benchmark reports a failure, it does not stop the others
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape")
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    log(f"/metrics scrape at N={args.peers} (wireguard-go, throw-away namespace)")
    result = run(args.peers, args.runs)
    print(line(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result.get("met") else 1


if __name__ == "__main__":
    sys.exit(main())

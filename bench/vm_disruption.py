"""Disruption: do spokes lose packets while the hub's peers change?

Two spokes, each in its own network namespace joined to the hub's namespace by a veth
(underlay 198.18.<i>.0/24, the benchmark range), ping the hub's tunnel address every
10 ms. Meanwhile `peers` more peers are added and then removed:

  ours      through Node annotations, by a real `wg-kube hub` process (kernel WireGuard in
            the VM; wireguard-go on the host in --quick), as fast as the API takes them;
  baseline  what the original project does: rewrite a wg-quick config file and run
            `wg-quick down && wg-quick up` per change. It gets the fewest changes that
            can express the churn (one "add all", one "remove all"), which favours it;
            after each change we wait until both spokes' pings come back (capped).

Lost packets are counted per ICMP sequence number (the final 200 ms before the pings are
stopped are not counted: those packets may still be in flight); the longest gap is the
longest time between two consecutive replies, from `ping -D` timestamps.

In the VM: `python -m bench.vm_disruption --netns --backend kernel --json OUT` (the
`--netns` flag makes a throw-away namespace for the hub side and re-runs itself in it).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    PREFIX,
    ApiProcess,
    HubProcess,
    Peer,
    delete_link,
    hub_node,
    log,
    make_peers,
    peer_annotations,
    run,
    socket_path,
    unique_ifname,
    wait_device,
    wait_until,
)
from wgkube.domain.keys import PrivateKey
from wgkube.testing.netns import NetNS, create_netns, delete_netns

PORT = 51820
HUB_TUNNEL = "100.96.0.1"
INTERVAL = 0.01
TAIL_EXCLUDED_S = 0.2
_REPLY = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)", re.MULTILINE)
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


@dataclass
class Spoke:
    index: int
    ns: NetNS
    veth: str
    ifname: str = ""

    @property
    def tunnel(self) -> str:
        return f"100.96.1.{self.index + 1}"

    @property
    def hub_underlay(self) -> str:
        return f"198.18.{self.index + 1}.1"

    @property
    def underlay(self) -> str:
        return f"198.18.{self.index + 1}.2"


def make_spokes(count: int) -> list[Spoke]:
    spokes: list[Spoke] = []
    try:
        for i in range(count):
            ns = create_netns(f"wgb-s{i}")
            spoke = Spoke(i, ns, f"wgbv{i}{secrets.token_hex(3)}")
            spokes.append(spoke)
            run(["ip", "link", "add", spoke.veth, "type", "veth", "peer", "eth0", "netns", ns.name])
            run(["ip", "address", "add", f"{spoke.hub_underlay}/24", "dev", spoke.veth])
            run(["ip", "link", "set", spoke.veth, "up"])
            ns.ip("address", "add", f"{spoke.underlay}/24", "dev", "eth0")
            ns.ip("link", "set", "eth0", "up")
    except BaseException:
        remove_spokes(spokes)
        raise
    return spokes


def remove_spokes(spokes: Sequence[Spoke]) -> None:
    for spoke in spokes:
        remove_spoke_device(spoke)
        delete_netns(spoke.ns)  # the veth pair goes with its inner end
        subprocess.run(["ip", "link", "del", spoke.veth], capture_output=True)


def remove_spoke_device(spoke: Spoke) -> None:
    if spoke.ifname:
        spoke.ns.ip("link", "del", spoke.ifname, check=False)
        path = socket_path(spoke.ifname)
        deadline = time.monotonic() + 10
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        spoke.ifname = ""


def configure_spoke(spoke: Spoke, backend: str, hub_key: str, work: Path) -> None:
    """A fresh WireGuard device in the spoke with the hub as its one peer (plain `wg`/`ip`)."""
    remove_spoke_device(spoke)
    spoke.ifname = unique_ifname("wgbs")
    if backend == "kernel":
        spoke.ns.ip("link", "add", spoke.ifname, "type", "wireguard")
    else:
        run(spoke.ns.argv("wireguard-go", spoke.ifname))
        wait_until(
            lambda: spoke.ns.run("wg", "show", spoke.ifname, check=False).returncode == 0,
            timeout=10,
            what="the spoke's wireguard-go",
        )
    key_file = work / f"{spoke.ifname}.key"
    key_file.write_text(PrivateKey.generate().b64 + "\n")
    spoke.ns.run(
        *["wg", "set", spoke.ifname, "private-key", str(key_file)],
        *["peer", hub_key, "endpoint", f"{spoke.hub_underlay}:{PORT}"],
        *["allowed-ips", f"{HUB_TUNNEL}/32", "persistent-keepalive", "25"],
    )
    spoke.ns.ip("address", "add", f"{spoke.tunnel}/32", "dev", spoke.ifname)
    spoke.ns.ip("link", "set", spoke.ifname, "up")
    spoke.ns.ip("route", "add", f"{HUB_TUNNEL}/32", "dev", spoke.ifname)


def spoke_public_key(spoke: Spoke) -> str:
    return spoke.ns.run("wg", "show", spoke.ifname, "public-key").stdout.strip()


def warm_up(spokes: Sequence[Spoke], timeout: float) -> None:
    """Until every spoke gets a reply: the handshake is done before measuring."""
    for spoke in spokes:
        wait_until(
            lambda s=spoke: (
                s.ns.run(  # type: ignore[misc]
                    "ping", "-n", "-c", "1", "-W", "1", HUB_TUNNEL, check=False
                ).returncode
                == 0
            ),
            timeout=timeout,
            interval=0.1,
            what=f"a first reply over the tunnel from spoke {spoke.index}",
        )


class Pinger:
    """`ping -D -i 0.01` from a spoke to the hub, its output in a file."""

    def __init__(self, spoke: Spoke, work: Path) -> None:
        self.spoke = spoke
        self.path = work / f"ping-{spoke.index}-{secrets.token_hex(3)}.log"
        with self.path.open("wb") as out:
            self.proc = subprocess.Popen(
                spoke.ns.argv("ping", "-D", "-n", "-i", str(INTERVAL), HUB_TUNNEL),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def last_reply(self) -> float:
        """Wall-clock time of the latest reply so far (0 when none)."""
        text = self.path.read_text(errors="replace")
        start = max(0, len(text) - 4000)
        replies = _REPLY.findall(text, start)
        return float(replies[-1][0]) if replies else 0.0

    def stop(self) -> dict[str, Any]:
        stopped = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: ping prints its summary
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return parse_ping(self.path.read_text(errors="replace"), stopped)


def parse_ping(text: str, stopped: float) -> dict[str, Any]:
    """Counts from `ping -D` output; `stopped` is the wall-clock time ping was stopped."""
    replies = {int(seq): float(ts) for ts, seq in _REPLY.findall(text)}
    summary = _SUMMARY.search(text)
    if summary is None:
        raise ValueError(f"no ping summary in: {text[-500:]!r}")
    transmitted = int(summary[1])
    counted = max(0, transmitted - round(TAIL_EXCLUDED_S / INTERVAL))
    lost = sum(1 for seq in range(1, counted + 1) if seq not in replies)
    stamps = sorted(replies.values())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    if any(seq not in replies for seq in range(max(replies, default=0) + 1, counted + 1)):
        # Silent until the end: the gap runs from the last reply to the stop.
        gaps.append(stopped - TAIL_EXCLUDED_S - (stamps[-1] if stamps else stopped))
    return {
        "transmitted": transmitted,
        "received": int(summary[2]),
        "counted": counted,
        "lost": lost,
        "longest_gap_s": max(gaps, default=0.0),
    }


def combine(pings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "lost": sum(p["lost"] for p in pings),
        "counted": sum(p["counted"] for p in pings),
        "longest_gap_s": max(p["longest_gap_s"] for p in pings),
        "per_spoke": list(pings),
    }


@contextlib.contextmanager
def pinging(spokes: Sequence[Spoke], work: Path) -> Iterator[list[Pinger]]:
    pingers = [Pinger(s, work) for s in spokes]
    try:
        yield pingers
    finally:
        for p in pingers:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


# -- ours ---------------------------------------------------------------------------------------


def spoke_node(name: str, key: str, tunnel: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {PREFIX + "peer": "true"},
            "annotations": {PREFIX + "public-key": key, PREFIX + "allowed-ips": f"{tunnel}/32"},
        },
        "spec": {},
    }


def measure_ours(
    spokes: Sequence[Spoke], backend: str, churn: Sequence[Peer], work: Path, slow: float
) -> dict[str, Any]:
    api = ApiProcess(work).start()
    log("disruption ours: API emulator up")
    hub = HubProcess(work, api, unique_ifname("wgbd"), backend=backend)
    try:
        api.create_node(hub_node())
        hub.start()
        log("disruption ours: hub started")
        # Spokes need the hub's key first: it exists once the device is configured.
        key_path = work / "keys" / f"{hub.ifname}.key"
        wait_until(key_path.exists, timeout=60 * slow, what="the hub's key")
        hub_key = PrivateKey.parse(key_path.read_text().strip()).public_key().b64
        for spoke in spokes:
            configure_spoke(spoke, backend, hub_key, work)
            api.create_node(
                spoke_node(f"spoke-{spoke.index}", spoke_public_key(spoke), spoke.tunnel)
            )
        wait_device(hub.ifname, len(spokes), timeout=120 * slow, alive=hub.check_alive)
        # Plain Nodes to annotate later, made once the hub has listed (see the report:
        # Kopf's initial listing is slow with many Nodes, and it is not what is measured).
        api.create_nodes([{"metadata": {"name": p.name}, "spec": {}} for p in churn])
        log(f"disruption ours: the hub has both spokes; {len(churn)} plain Nodes; warming up")
        warm_up(spokes, 30 * slow)
        writes_before = len(hub.applied())
        log(f"disruption ours: pinging; adding and removing {len(churn)} peers via annotations")
        with pinging(spokes, work) as pingers:
            time.sleep(1.0)
            started = time.perf_counter()
            for p in churn:
                api.patch_node(
                    p.name,
                    {
                        "metadata": {
                            "labels": {PREFIX + "peer": "true"},
                            "annotations": peer_annotations(p),
                        }
                    },
                )
            wait_device(
                hub.ifname, len(spokes) + len(churn), timeout=120 * slow, alive=hub.check_alive
            )
            added = time.perf_counter()
            gone = {PREFIX + "public-key": None, PREFIX + "allowed-ips": None}
            for p in churn:
                api.patch_node(
                    p.name, {"metadata": {"labels": {PREFIX + "peer": None}, "annotations": gone}}
                )
            wait_device(hub.ifname, len(spokes), timeout=120 * slow, alive=hub.check_alive)
            finished = time.perf_counter()
            time.sleep(1.0 + TAIL_EXCLUDED_S)
            pings = [p.stop() for p in pingers]
        writes = hub.applied()[writes_before:]
        result = combine(pings)
        result.update(
            {
                "method": f"wg-kube hub ({backend}), peers added then removed via Node annotations",
                "add_s": added - started,
                "churn_s": finished - started,
                "reconciles_that_wrote": len(writes),
                "kernel_ops": sum(writes),
            }
        )
        log(f"disruption ours: lost {result['lost']}, longest gap {result['longest_gap_s']:.3f}s")
        return result
    finally:
        hub.stop()
        delete_link(hub.ifname)
        api.stop()


# -- baseline: wg-quick down && wg-quick up per change ----------------------------------------


def write_conf(path: Path, ifname: str, key: str, peers: Sequence[tuple[str, str]]) -> None:
    """A wg-quick config with the peers; its routes go in by one `ip -batch` (PostUp).

    wg-quick would add each peer's route with its own `ip` processes; under emulation
    that alone takes minutes for 200 peers. `Table = off` plus one batch keeps the same
    routes and spares the baseline that cost: the comparison favours the baseline.
    """
    batch = path.with_suffix(".routes")
    batch.write_text("".join(f"route add {allowed} dev {ifname}\n" for _, allowed in peers))
    lines = [
        "[Interface]",
        f"PrivateKey = {key}",
        f"ListenPort = {PORT}",
        f"Address = {HUB_TUNNEL}/32",
        "Table = off",
        f"PostUp = ip -batch {batch}",
    ]
    for public, allowed in peers:
        lines += ["", "[Peer]", f"PublicKey = {public}", f"AllowedIPs = {allowed}"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")


def wg_quick(verb: str, conf: Path, ifname: str) -> None:
    run(["wg-quick", verb, str(conf)])
    if verb == "down":
        # wireguard-go (host, --quick) removes its socket as it exits; a new one started
        # meanwhile for the same name would lose its socket to that clean-up.
        wait_until(lambda: not socket_path(ifname).exists(), timeout=10, what="wg-quick down")


def measure_baseline(
    spokes: Sequence[Spoke],
    backend: str,
    churn: Sequence[Peer],
    work: Path,
    changes: int,
    recovery_cap: float,
    slow: float,
) -> dict[str, Any]:
    ifname = unique_ifname("wgbq")
    conf = work / f"{ifname}.conf"
    key = PrivateKey.generate()
    up = False
    try:
        for spoke in spokes:
            configure_spoke(spoke, backend, key.public_key().b64, work)
        base = [(spoke_public_key(s), f"{s.tunnel}/32") for s in spokes]
        grown = base + [(p.key, p.allowed) for p in churn]
        write_conf(conf, ifname, key.b64, base)
        wg_quick("up", conf, ifname)
        up = True
        warm_up(spokes, 30 * slow)
        steps = [grown, base][:changes] if changes <= 2 else [grown, base] * (changes // 2)
        per_change: list[dict[str, Any]] = []
        log(f"disruption baseline: pinging; {len(steps)} x (wg-quick down && wg-quick up)")
        with pinging(spokes, work) as pingers:
            time.sleep(1.0)
            for peers in steps:
                write_conf(conf, ifname, key.b64, peers)
                started = time.perf_counter()
                wg_quick("down", conf, ifname)
                up = False
                wg_quick("up", conf, ifname)
                up = True
                restarted = time.perf_counter()
                wall = time.time()
                # Every spoke's pings must come back before the next change (capped).
                deadline = time.monotonic() + recovery_cap
                recovered = False
                while time.monotonic() < deadline:
                    if all(p.last_reply() > wall for p in pingers):
                        recovered = True
                        break
                    time.sleep(0.05)
                per_change.append(
                    {
                        "peers": len(peers),
                        "down_up_s": restarted - started,
                        "recovered": recovered,
                        "recovered_after_s": time.perf_counter() - started if recovered else None,
                    }
                )
            time.sleep(1.0 + TAIL_EXCLUDED_S)
            pings = [p.stop() for p in pingers]
        result = combine(pings)
        result.update(
            {
                "method": "wg-quick down && wg-quick up per change (the original's approach)",
                "changes": len(steps),
                "per_change": per_change,
                "recovered": all(c["recovered"] for c in per_change),
                "recovery_cap_s": recovery_cap,
            }
        )
        log(
            f"disruption baseline: lost {result['lost']}, "
            f"longest gap {result['longest_gap_s']:.3f}s"
        )
        return result
    finally:
        if up:
            subprocess.run(["wg-quick", "down", str(conf)], capture_output=True)
        delete_link(ifname)


def run_disruption(
    *,
    backend: str,
    work: Path,
    peers: int = 200,
    baseline_changes: int = 2,
    recovery_cap: float = 40.0,
    slow: float = 1.0,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Both measurements on the same spokes (fresh WireGuard devices for each).

    `checkpoint` gets the result so far after each half, so that a run cut short (the
    VM's timeout) still reports what it measured.
    """
    result: dict[str, Any] = {
        "backend": backend,
        "peers": peers,
        "spokes": 2,
        "interval_s": INTERVAL,
        "status": "partial",
    }
    churn = make_peers(peers, prefix="churn")
    spokes = make_spokes(2)
    try:
        result["ours"] = measure_ours(spokes, backend, churn, work, slow)
        if checkpoint is not None:
            checkpoint(result)
        result["baseline"] = measure_baseline(
            spokes, backend, churn, work, baseline_changes, recovery_cap, slow
        )
    finally:
        remove_spokes(spokes)
    del result["status"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vm_disruption")
    parser.add_argument("--backend", choices=["kernel", "userspace"], default="kernel")
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--baseline-changes", type=int, default=2)
    parser.add_argument("--recovery-cap", type=float, default=40.0)
    parser.add_argument("--slow", type=float, default=1.0, help="timeout factor (VM: emulated)")
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--netns", action="store_true", help="run in a throw-away namespace")
    parser.add_argument("--workdir", type=Path, default=None, help="for logs (default: /tmp)")
    args = parser.parse_args(argv)
    if args.netns:
        ns = create_netns("wgb-dhub")
        try:
            rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--netns"]
            cmd = [sys.executable, "-m", "bench.vm_disruption", *rest]
            return subprocess.run(ns.argv(*cmd), check=False).returncode
        finally:
            pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            delete_netns(ns)
    with tempfile.TemporaryDirectory(prefix="wgkube-bench-disruption-", dir=args.workdir) as tmp:
        started = time.monotonic()

        def checkpoint(partial: dict[str, Any]) -> None:
            write_result(args.json, {**partial, "duration_s": time.monotonic() - started})

        try:
            result = run_disruption(
                backend=args.backend,
                work=Path(tmp),
                peers=args.peers,
                baseline_changes=args.baseline_changes,
                recovery_cap=args.recovery_cap,
                slow=args.slow,
                checkpoint=checkpoint,
            )
        except Exception as exc:
            import traceback

            traceback.print_exc()
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
            for log_file in sorted(Path(tmp).glob("*.log")):
                print(f"--- {log_file.name} (tail)", file=sys.stderr)
                print(log_file.read_text(errors="replace")[-3000:], file=sys.stderr)
        result["duration_s"] = time.monotonic() - started
        write_result(args.json, result)
    return 0


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Written whole or not at all, and on the disk before the VM powers off: the host
    reads this file over 9p after the guest is gone (the console may have lost lines)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        fh.write(json.dumps(result, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    print(f"bench.vm_disruption: result written to {path} ({result.get('status', 'done')})")


if __name__ == "__main__":
    sys.exit(main())

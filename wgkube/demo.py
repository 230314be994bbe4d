"""`make demo`: a hub, spokes and an ordinary node over real WireGuard on this machine,
against the API emulator.

Every "node" is a network namespace on one of two bridges in 198.18.0.0/23 (the
benchmarking range: nothing outside this machine is ever addressed): the cluster's node
network (the hub's InternalIP and an ordinary node) and one standing for the internet (the
hub's public side and the spokes), so that only the tunnel joins spokes and cluster nodes.
The real `wg-kube hub`, `wg-kube spoke` and `wg-kube router` processes run inside them
and find each other only through the emulated API server. Needs root.

    python -m wgkube.demo            run, print, clean up
    python -m wgkube.demo --keep     leave everything running to explore
    python -m wgkube.demo --clean    remove what a --keep (or killed) run left

Each run starts from a fresh workdir and first removes what an earlier run recorded
there; every failure ends in one line `demo failed: ...` that names the step and its log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wgkube.domain.annotations import DEFAULT_PREFIX, Keys
from wgkube.domain.errors import WgKubeError
from wgkube.kernel import kernel_wireguard_unavailable, userspace_unavailable
from wgkube.kube.client import Api
from wgkube.observe.status import collect, render_table
from wgkube.testing.lab import (
    API_PORT,
    BRIDGE,
    HUB_WG,
    INTERNET,
    INTERNET_BRIDGE,
    ROUTER_PROBE_PORT,
    SLOW,
    TWO_UNDERLAY_HUB_ARGS,
    UNDERLAY,
    Lab,
    LabError,
    LabState,
    Node,
    clean,
    leftovers,
    sweep,
)
from wgkube.testing.netns import NetNS, PingResult, PingStream, can_make_namespaces

PING_INTERVAL = 0.01
STATUS_WAIT = 20.0
"""Seconds the status table may wait for the API to show every spoke up (the spokes
write their condition every health interval, 10 s by default)."""
ROUTER_WAIT = 40.0
"""Seconds the ordinary node's router may take to route the overlay (it waits for the
hub's announcement)."""
ORIGINAL_COST = (
    "the original Go controller restarts the interface on every peer change (wg-quick "
    "down/up); measured by make bench with kernel WireGuard, that cuts a spoke the hub "
    "cannot dial for ~15 s (README, 'Performance')"
)


def say(text: str = "") -> None:
    print(text, flush=True)


class Demo(Lab):
    def __init__(self, workdir: Path, spokes: int) -> None:
        super().__init__(workdir, hub_args=TWO_UNDERLAY_HUB_ARGS)
        self.spoke_count = spokes
        self.summary: dict[str, Any] = {}
        self.failure = ""
        """Why a run that completed did not pass (a ping lost)."""

    async def print_status(self, spokes: int) -> None:
        """`wg-kube status` as a user would run it: the overlay from the API alone.

        The hub and the spokes publish peer state on transitions, so give them a moment
        to report every spoke up before printing (what is printed is what the API says).
        """
        async with await Api.connect(self.kubeconfig) as api:
            deadline = time.monotonic() + STATUS_WAIT * SLOW
            while True:
                rows = await collect(api, Keys())
                up = [
                    r
                    for r in rows
                    if r.get("role") == "peer"
                    and r.get("state") == "up"
                    and str(r.get("tunnel", "")).startswith("True")
                ]
                routers = [r for r in rows if r.get("role") == "router"]
                if (len(up) >= spokes and routers) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        say("  $ wg-kube status")
        for line in render_table(rows).splitlines():
            say("  " + line)

    async def wait_router(self, node: Node) -> dict[str, Any]:
        """Until the router's /readyz says its routes are in place; its summary."""
        url = f"http://{node.underlay}:{ROUTER_PROBE_PORT}/readyz"
        deadline = time.monotonic() + ROUTER_WAIT * SLOW
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            code, body = await asyncio.to_thread(_readyz, url)
            if code == 200:
                return body
            await asyncio.sleep(0.2)
        problems = "; ".join(body.get("problems") or ()) or "no answer from /readyz"
        raise LabError(
            f"the router on {node.name} is not ready after {ROUTER_WAIT * SLOW:.0f}s "
            f"({problems}); log: {self.log_path(node)}"
        )

    async def reach(self, src: Node, target: str, count: int = 5) -> PingResult:
        """A ping that cannot even send (no route: "Network is unreachable") is 0 of
        `count`, with ping's own words, not a crash."""
        try:
            return await self.ping(src, target, count=count)
        except ValueError:
            proc = await asyncio.create_subprocess_exec(
                *NetNS(src.ns).argv("ping", "-n", "-c", "1", "-W", "1", target),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            return PingResult(count, 0, out.decode(errors="replace").strip())

    async def show(self) -> bool:
        try:
            return await self.run()
        finally:
            await self.close_kernels()

    # -- the show ------------------------------------------------------------------------
    async def run(self) -> bool:
        say(
            "wg-kube demo: each node a network namespace; the cluster's node network is "
            f"bridge {BRIDGE} ({UNDERLAY}.0/24), the internet bridge {INTERNET_BRIDGE} "
            f"({INTERNET}.0/24)"
        )
        say(
            "  the hub is on both, the spokes out on the internet, an ordinary node "
            "(wg-kube router) on the node network: only the tunnel joins them"
        )
        self.make_bridge()
        self.make_internet()
        # On the internet side, as a managed cluster's public endpoint: the spokes route
        # the cluster's node network into the tunnel, and the API must stay outside it.
        api_address = f"{INTERNET}.254"
        self.start_api(host=api_address)
        say(f"  API emulator at http://{api_address}:{API_PORT} (kubeconfig {self.kubeconfig})")
        hub = Node("hub", "hub", 1, site="both")
        self.place(hub, api_address=api_address)
        self.start_process(hub)
        backend = await self.backend_name(hub)
        say(
            f"  WireGuard: {backend}"
            + (
                " (wireguard-go; this kernel has no WireGuard module)"
                if backend == "userspace"
                else " (the kernel module)"
            )
        )
        spokes = [
            Node(f"spoke-{i}", "spoke", 10 + i, site="internet")
            for i in range(1, self.spoke_count + 1)
        ]
        for spoke in spokes:
            self.place(spoke, api_address=api_address)
            self.start_process(spoke)
        ordinary = Node("node-1", "router", 2)
        self.place(ordinary, api_address=api_address)
        self.start_router(ordinary)
        for spoke in spokes:
            await self.wait_handshake(spoke, hub)
        say("  every spoke has completed a handshake with the hub")
        ready = await self.wait_router(ordinary)
        say(
            f"  {ordinary.name} (neither hub nor spoke) runs wg-kube router: "
            f"{', '.join(ready.get('routes') or ())} (ip route show proto 87)\n"
        )
        await self.print_status(len(spokes))

        say("\nping over the tunnel (5 each):")
        ok = True
        pings: dict[str, dict[str, int]] = {}

        async def ping(src: Node, target: str, label: str, what: str) -> None:
            nonlocal ok
            result = await self.reach(src, target)
            pings[label] = {"sent": result.transmitted, "received": result.received}
            ok &= result.received == result.transmitted > 0
            say(f"  {src.name} -> {what}: {result.received}/{result.transmitted}{why(result)}")

        for spoke in spokes:
            await ping(spoke, HUB_WG, f"{spoke.name}->hub", f"hub {HUB_WG}")
        if len(spokes) >= 2:
            a, b = spokes[0], spokes[1]
            await ping(
                a, b.wg_address, f"{a.name}->{b.name}", f"{b.name} {b.wg_address} (through the hub)"
            )
        first = spokes[0]
        await ping(
            ordinary,
            first.wg_address,
            f"{ordinary.name}->{first.name}",
            f"{first.name} {first.wg_address} (ordinary node, via the hub's InternalIP)",
        )
        await ping(
            first,
            ordinary.underlay,
            f"{first.name}->{ordinary.name}",
            f"{ordinary.name} {ordinary.underlay} (its InternalIP, through the tunnel)",
        )

        new = Node(f"spoke-{len(spokes) + 1}", "spoke", 10 + len(spokes) + 1, site="internet")
        say(
            f"\nadding {new.name} live while {len(spokes)} spokes ping the hub and "
            f"{ordinary.name} pings {first.name}, every {PING_INTERVAL * 1000:.0f} ms:"
        )
        sources = [(s, HUB_WG) for s in spokes] + [(ordinary, first.wg_address)]
        streams = [
            await PingStream.start(NetNS(src.ns), target, interval=PING_INTERVAL)
            for src, target in sources
        ]
        started = time.monotonic()
        try:
            await asyncio.sleep(1.0)
            self.place(new, api_address=api_address)
            self.start_process(new)
            await self.wait_handshake(new, hub)
            # Replies sent after the change must come back too, so wait for some more.
            for stream in streams:
                await stream.wait_for_replies(len(stream.replies) + 50)
        finally:
            for stream in streams:
                await stream.stop()
        took = time.monotonic() - started
        # Judged by replies, not ping's summary: stopping ping counts the packet still in
        # flight as lost.
        lost = sum(len(stream.missing) for stream in streams)
        sent = sum(max(stream.replies, default=0) for stream in streams)
        say(
            f"  {new.name} joined and completed its handshake; {sent} pings in {took:.1f}s, "
            f"lost {lost}"
        )
        reached = await self.reach(ordinary, new.wg_address)
        pings[f"{ordinary.name}->{new.name}"] = {
            "sent": reached.transmitted,
            "received": reached.received,
        }
        ok &= reached.received == reached.transmitted > 0
        say(
            f"  {ordinary.name} -> {new.name} {new.wg_address} (no route written for it: "
            f"the router routes the aggregate): {reached.received}/{reached.transmitted}"
            f"{why(reached)}"
        )
        say(f"  (for comparison: {ORIGINAL_COST})\n")
        ok &= lost == 0 and sent > 0
        if not ok:
            self.failure = (
                f"pings lost: {pings} before the change, {lost} of {sent} during it; "
                f"logs: {self.workdir / 'logs'}"
            )
        await self.print_status(len(spokes) + 1)
        self.summary = {
            "backend": backend,
            "pings": pings,
            "live_add": {"sent": sent, "lost": lost, "seconds": round(took, 2)},
            "router": {"node": ordinary.name, "routes": ready.get("routes") or []},
            "ok": ok,
        }
        return ok


def why(result: PingResult) -> str:
    """What ping said when nothing came back (e.g. no route), else nothing."""
    if result.received or not result.output:
        return ""
    words = [ln for ln in result.output.splitlines() if ln.startswith("ping:")]
    return f" ({words[-1]})" if words else ""


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(exc.read())
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


RUN_FILES = ("logs", "keys", "kubeconfig", "state.json", "state.tmp")
"""What a run writes in its workdir: removed before each run and by --clean, so nothing
left by an earlier run (a kubeconfig naming a dead server, old keys) changes the next."""

CLEAN_COMMAND = "make demo-clean (or: python -m wgkube.demo --clean)"


def fail(line: str) -> int:
    say(f"demo failed: {line}")
    return 1


def remove_run_files(workdir: Path) -> None:
    for name in RUN_FILES:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def remove_recorded(workdir: Path) -> bool:
    """Remove what the run recorded in `workdir` (kept, failed or killed), then anything
    else carrying the demo's names. False when there was no record."""
    if not (workdir / "state.json").exists():
        return False
    try:
        state = LabState.load(workdir)
    except (OSError, ValueError, TypeError, KeyError):
        pass  # cut short while being written: the names alone find everything
    else:
        clean(state)
    sweep()
    return True


def missing_tools() -> str | None:
    """Why the demo cannot run on this machine (a missing program), or None."""
    for tool, package in (("ip", "iproute2"), ("ping", "iputils-ping")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed: apt-get install {package} (make demo does)"
    if userspace_unavailable() is not None and asyncio.run(kernel_wireguard_unavailable()):
        return (
            "no WireGuard here: the kernel has no wireguard module and wireguard-go is not "
            "installed: apt-get install wireguard-go (make demo does)"
        )
    return None


def clean_command(workdir: Path) -> int:
    recorded = remove_recorded(workdir)
    found = leftovers()
    if found:
        sweep()
    remove_run_files(workdir)
    still = leftovers()
    if still:
        return fail(f"could not remove {', '.join(still)}")
    say("demo removed" if recorded or found else "nothing to clean")
    return 0


_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:
        # A forked helper (pyroute2 forks one per namespace, and stops it with SIGTERM)
        # inherits this handler: it must die, not unwind a copy of the demo's clean-up.
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wgkube.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", default=".demo", help="logs, keys, kubeconfig (default .demo)")
    parser.add_argument("--spokes", type=int, default=3, help="spokes at the start (default 3)")
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--clean", action="store_true", help="remove what a --keep run left")
    parser.add_argument("--json", help="write a machine-readable summary here")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    why = can_make_namespaces()
    if why:
        return fail(
            f"{why}: run it as root (sudo make demo)" if os.geteuid() else missing_tools() or why
        )
    if args.clean:
        return clean_command(workdir)
    if remove_recorded(workdir):
        say(f"removed the previous demo recorded in {workdir} (kept, failed or killed)")
    found = leftovers()
    if found:
        return fail(
            f"another demo or lab run is still set up ({', '.join(found[:4])}); "
            f"remove it with {CLEAN_COMMAND}"
        )
    if missing := missing_tools():
        return fail(missing)
    workdir.mkdir(parents=True, exist_ok=True)
    remove_run_files(workdir)
    # `kill` and a closed terminal clean up like Ctrl-C; only SIGKILL leaves a record
    # for the next run to remove.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    demo = Demo(workdir, args.spokes)
    ok = False
    failure = ""
    try:
        ok = asyncio.run(demo.show())
        failure = "" if ok else demo.failure
    except KeyboardInterrupt:
        failure = "interrupted"
    except (RuntimeError, WgKubeError, OSError) as exc:
        failure = str(exc)
    except Exception as exc:  # a bug: its traceback goes to a file, the user gets a line
        trace = workdir / "logs" / "demo-traceback.log"
        trace.write_text(traceback.format_exc())
        failure = f"unexpected {type(exc).__name__}: {exc}; traceback: {trace}"
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(demo.summary | {"ok": ok}, indent=1))
        if args.keep and ok:
            say("\nleft running. Explore with:")
            say(f"  export KUBECONFIG={demo.kubeconfig}")
            say(f"  kubectl get nodes -L {DEFAULT_PREFIX}hub,{DEFAULT_PREFIX}peer")
            say("  ip netns exec wgkdemo-hub wg show wg-hub")
            say("  ip netns exec wgkdemo-node-1 ip route show proto 87")
            say(f"  logs: {workdir}/logs/   remove it all: make demo-clean")
        else:
            demo.clean()
            say("cleaned up: namespaces, processes, interfaces and the bridges are gone")
    if not ok:
        return fail(failure or "see the output above")
    say("RESULT: all pings answered, 0 lost during the live change")
    return 0


if __name__ == "__main__":
    sys.exit(main())

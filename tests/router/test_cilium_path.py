"""Every cluster node reaches the spokes: the path Cilium uses, end to end.

Two underlays: the cluster's node network (the hub's InternalIP and two ordinary nodes)
and a second bridge standing for the internet (the hub's public side and the spokes), so
that nothing but the tunnel joins spokes and cluster nodes. Real processes (hub, spokes,
routers), real WireGuard (wireguard-go on the host, marker `userspace`; the kernel's
inside the test VM, marker `kernel`), a real kube-apiserver, production identities bound
only by manifests/: the hub as its ServiceAccount, spokes as system:node:<name>, routers as the
ServiceAccount wg-kube/wg-kube-router. The API server listens on the internet side (a
public endpoint, as a managed cluster's); cluster nodes reach it through a host route.

The tests share one lab per backend and run in file order (each leaves it as it found
it). The kernel variant, in the emulated VM with the control plane beside it (~12 min
there: each Python process takes about a minute to start), runs the data path: the two
ways through the tunnel, a third spoke joining and leaving under four 10 ms streams, and
VXLAN at the overlay MTU. The routers' adoption, following and `--down` are their own
route work, the same over either WireGuard, and run on the host only. Needs root,
WireGuard and the control plane binaries; run under the lab lock.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.support.controlplane import require_control_plane
from tests.system.test_hub_and_spokes import skip_unless
from wgkube.testing.apiserver import RealApiServer
from wgkube.testing.controlplane import ControlPlane, node_user
from wgkube.testing.lab import (
    HUB_WG,
    INTERNET,
    ROUTER_PROBE_PORT,
    SLOW,
    TWO_UNDERLAY_HUB_ARGS,
    UNDERLAY,
    Lab,
    Node,
)
from wgkube.testing.netns import NetNS, PingStream

ROOT = Path(__file__).resolve().parents[2]
ROUTER_USER = "system:serviceaccount:wg-kube:wg-kube-router"
OVERLAY = "100.96.0.0/24"
CLUSTER = f"{UNDERLAY}.0/24"
HUB_ARGS = TWO_UNDERLAY_HUB_ARGS
"""What the hub advertises so spokes route the cluster's node network through it, and the
aggregate it tells ordinary nodes to route through it (the README's recipe)."""
VXLAN_OVERHEAD = 50
"""Outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 bytes."""
ICMP_OVERHEAD = 28

pytestmark = [
    pytest.mark.realapi,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]


USERSPACE = pytest.param("userspace", marks=pytest.mark.userspace, id="userspace")
KERNEL = pytest.param("kernel", marks=pytest.mark.kernel, id="kernel")
BOTH = pytest.mark.parametrize("path", [USERSPACE, KERNEL], indirect=True)
"""The backend of the shared lab. Userspace first in both lists: pytest groups tests on
a module-scoped fixture by the parameter's position, so one lab serves each backend."""
HOST_ONLY = pytest.mark.parametrize("path", [USERSPACE], indirect=True)


@dataclass
class Path_:
    lab: Lab
    plane: ControlPlane
    admin: RealApiServer
    hub: Node
    nodes: list[Node]
    spokes: list[Node]


async def until(what: str, probe: Callable[[], Awaitable[bool]], within: float = 30) -> None:
    deadline = time.monotonic() + within * SLOW
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {within * SLOW:.0f}s: {what}")


async def reaches(src: Node, target: str) -> bool:
    """One echo answered within a second ("Network is unreachable" is a no as well)."""
    argv = NetNS(src.ns).argv("ping", "-n", "-q", "-c", "1", "-W", "1", target)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait() == 0


def _reaches(src: Node, target: str) -> Callable[[], Awaitable[bool]]:
    return functools.partial(reaches, src, target)


async def readyz(node: Node) -> tuple[int, dict[str, Any]]:
    url = f"http://{node.underlay}:{ROUTER_PROBE_PORT}/readyz"

    def get() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    return await asyncio.to_thread(get)


def our_routes(node: Node) -> str:
    return NetNS(node.ns).ip("route", "show", "proto", "87").stdout.strip()


def log_of(lab: Lab, node: Node) -> str:
    return (lab.workdir / "logs" / f"{node.name}.log").read_text(errors="replace")


class RouteMonitor:
    """`ip monitor route` in a node's namespace: every route write, seen from outside."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, node: Node) -> RouteMonitor:
        proc = await asyncio.create_subprocess_exec(
            "ip", "-n", node.ns, "monitor", "route", stdout=asyncio.subprocess.PIPE
        )
        monitor = cls(proc)
        await asyncio.sleep(0.3 * SLOW)  # subscribed before anything it should see happens
        return monitor

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().rstrip())

    async def stop(self) -> list[str]:
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.wait()
        await self._reader
        return self.lines


def spoke_down(lab: Lab, spoke: Node, kubeconfig: Path) -> None:
    """`wg-kube spoke --down` with the spoke's own identity: unregister, remove wg."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WG_", "KUBE"))}
    env.update(
        KUBECONFIG=str(kubeconfig),
        NODE_NAME=spoke.name,
        WG_INTERFACE=spoke.ifname,
        WG_ADDRESS=f"{spoke.wg_address}/32",
        WG_PRIVATE_KEY_FILE=str(lab.workdir / "keys" / f"{spoke.name}.key"),
        WG_BACKEND=lab.backend,
    )
    done = subprocess.run(
        NetNS(spoke.ns).argv(sys.executable, "-m", "wgkube", "spoke", "--down"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * SLOW,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def path(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Path_]:
    backend = request.param
    await skip_unless(backend)
    require_control_plane()
    workdir = tmp_path_factory.mktemp(f"cilium-{backend}") / "lab"
    lab = Lab(workdir, backend=backend, hub_args=HUB_ARGS)
    try:
        lab.make_bridge()
        lab.make_internet()
        api_address = f"{INTERNET}.254"
        with ControlPlane(host=api_address, start_timeout=60 * SLOW) as plane:
            applied = plane.kubectl("apply", "-f", str(ROOT / "manifests"))
            assert applied.returncode == 0, applied.stderr
            admin = RealApiServer(plane.kubeconfig)
            hub = Node("chub", "hub", 1, site="both")
            nodes = [Node(f"cnode-{i}", "router", 10 + i) for i in (1, 2)]
            spokes = [Node(f"cspoke-{i}", "spoke", 20 + i, site="internet") for i in (1, 2, 3)]
            identities = {hub.name: plane.hub_kubeconfig}
            identities |= {n.name: plane.kubeconfig_for(ROUTER_USER) for n in nodes}
            identities |= {s.name: plane.kubeconfig_for(node_user(s.name)) for s in spokes}
            lab.use_api(admin, identities)
            for node in (hub, *nodes, *spokes[:2]):
                lab.place(node, api_address=api_address)
            # Strict reverse-path filtering, as many distributions ship it: the hub sets
            # its WireGuard interface loose, and nothing it forwards may be dropped.
            NetNS(hub.ns).run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
            admin.patch_node(hub.name, {"metadata": {"labels": {"wireguard.kube/hub": "true"}}})
            for node in (hub, *spokes[:2]):
                lab.start_process(node)
            for spoke in spokes[:2]:
                # 120 (600 s in the VM): there the hub's and spokes' processes start beside the
                # control plane in an emulated guest, 1-3 minutes each; on the host a few s.
                await until(f"{spoke.name} reaches the hub", _reaches(spoke, HUB_WG), 120)
            yield Path_(lab, plane, admin, hub, nodes, spokes)
            await lab.close_kernels()
            lab.clean()
    finally:
        await lab.close_kernels()
        lab.clean()


@BOTH
async def test_ordinary_nodes_and_spokes_reach_each_other_once_the_routers_route_the_overlay(
    path: Path_,
) -> None:
    lab, hub, nodes, spokes = path.lab, path.hub, path.nodes, path.spokes[:2]
    # Nothing but the tunnel joins the two underlays, and without a router nothing leads
    # an ordinary node into it.
    for node in nodes:
        for spoke in spokes:
            assert not await reaches(node, spoke.wg_address)
            assert not await reaches(node, spoke.underlay)
    for node in nodes:
        lab.start_router(node)
    for node in nodes:

        async def ready(node: Node = node) -> bool:
            lab.check_alive()
            return (await readyz(node))[0] == 200

        await until(f"router on {node.name} is ready", ready, 60)
        assert our_routes(node) == f"{OVERLAY} via {UNDERLAY}.1 dev eth0"
        _, body = await readyz(node)
        assert body["hub"] == hub.name
        assert body["gateway"] == f"{UNDERLAY}.1"
        assert body["routes"] == [f"{OVERLAY} via {UNDERLAY}.1"]
    for spoke in spokes:
        # The hub's allowed-ips: spokes route the cluster's node network into the tunnel.
        assert f"{CLUSTER} dev {spoke.ifname}" in our_routes(spoke)
    for node in nodes:
        for spoke in spokes:
            there = await lab.ping(node, spoke.wg_address, count=3)
            assert there.received == 3, there.output
            back = await lab.ping(spoke, node.underlay, count=3)
            assert back.received == 3, back.output
    wg_rp = NetNS(hub.ns).run("cat", f"/proc/sys/net/ipv4/conf/{hub.ifname}/rp_filter")
    assert wg_rp.stdout.strip() == "2"
    forwarding = NetNS(hub.ns).run("cat", "/proc/sys/net/ipv4/ip_forward")
    assert forwarding.stdout.strip() == "1"
    lab.check_alive()
    logs = "".join(log_of(lab, n) for n in (hub, *nodes, *spokes))
    assert "permission denied" not in logs


@BOTH
async def test_nothing_is_lost_at_10ms_while_a_third_spoke_joins_and_leaves(
    path: Path_,
) -> None:
    lab, nodes, spokes = path.lab, path.nodes, path.spokes
    third = spokes[2]
    monitors = [await RouteMonitor.start(node) for node in nodes]
    streams = [
        await PingStream.start(NetNS(nodes[0].ns), spokes[0].wg_address, interval=0.01),
        await PingStream.start(NetNS(nodes[1].ns), spokes[1].wg_address, interval=0.01),
        await PingStream.start(NetNS(spokes[0].ns), nodes[1].underlay, interval=0.01),
        await PingStream.start(NetNS(spokes[1].ns), nodes[0].underlay, interval=0.01),
    ]
    try:
        for stream in streams:
            await stream.wait_for_replies(20)
        lab.place(third, api_address=f"{INTERNET}.254")
        lab.start_process(third)
        for node in nodes:
            await until(f"{node.name} reaches {third.name}", _reaches(node, third.wg_address), 60)
        back = await lab.ping(third, nodes[0].underlay, count=3)
        assert back.received == 3, back.output
        lab.stop_process(third)
        spoke_down(lab, third, lab.kubeconfigs[third.name])

        async def gone() -> bool:
            return not await reaches(nodes[0], third.wg_address)

        await until(f"{third.name} has left", gone, 30)
        for stream in streams:
            await stream.wait_for_replies(len(stream.replies) + 20)
    finally:
        results = [await stream.stop() for stream in streams]
        writes = [await monitor.stop() for monitor in monitors]
    for stream, result in zip(streams, results, strict=True):
        assert stream.missing == set(), result.output[-500:]
        assert len(stream.replies) > 100
    # The routers route an aggregate: a spoke joining or leaving changes none of it.
    assert writes == [[], []]


@BOTH
async def test_a_vxlan_tunnel_between_an_ordinary_node_and_a_spoke_carries_full_size_packets(
    path: Path_,
) -> None:
    """Cilium's tunnel mode, with the kernel's own VXLAN: the devices are addressed to
    the two node IPs (the spoke's is its WireGuard address) and carry pod addresses."""
    hub, node, spoke = path.hub, path.nodes[0], path.spokes[0]
    wg_mtu = int(NetNS(hub.ns).run("cat", f"/sys/class/net/{hub.ifname}/mtu").stdout)
    spoke_mtu = int(NetNS(spoke.ns).run("cat", f"/sys/class/net/{spoke.ifname}/mtu").stdout)
    mtu = min(wg_mtu, spoke_mtu) - VXLAN_OVERHEAD
    assert mtu == 1370  # the README's figure for the default WireGuard MTU of 1420
    ends = [
        (node, node.underlay, spoke.wg_address, "10.244.1.10", "10.244.2.0/24"),
        (spoke, spoke.wg_address, node.underlay, "10.244.2.10", "10.244.1.0/24"),
    ]
    try:
        for end, local, remote, pod, other in ends:
            ns = NetNS(end.ns)
            # `df set`: the outer packet may not be fragmented either, so a device MTU one
            # byte too large shows as loss instead of hiding in fragments.
            ns.ip(
                "link", "add", "vxc", "type", "vxlan", "id", "96", "local", local,
                "remote", remote, "dstport", "8472", "df", "set",
            )  # fmt: skip
            ns.ip("link", "set", "vxc", "mtu", str(mtu), "up")
            ns.ip("address", "add", f"{pod}/24", "dev", "vxc")
            ns.ip("route", "add", other, "dev", "vxc")
        full = str(mtu - ICMP_OVERHEAD)
        for src, target in ((node, "10.244.2.10"), (spoke, "10.244.1.10")):
            ns = NetNS(src.ns)
            out = ns.run("ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", full,
                         target, check=False)  # fmt: skip
            assert "3 received" in out.stdout, out.stdout + out.stderr
        # One byte more than the overlay holds is lost, not fragmented: 1370 is the MTU.
        for end, *_ in ends:
            NetNS(end.ns).ip("link", "set", "vxc", "mtu", str(mtu + 1))
        over = NetNS(node.ns).run(
            "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", str(mtu + 1 - 28),
            "10.244.2.10", check=False,
        )  # fmt: skip
        assert " 0 received" in over.stdout, over.stdout
    finally:
        for end, *_ in ends:
            NetNS(end.ns).ip("link", "del", "vxc", check=False)


@HOST_ONLY
async def test_a_restarted_router_adopts_its_routes_without_a_route_write(path: Path_) -> None:
    lab, node = path.lab, path.nodes[0]
    before = NetNS(node.ns).ip("-d", "route", "show", "table", "main").stdout
    monitor = await RouteMonitor.start(node)
    try:
        lab.stop_process(node)
        adopted = log_of(lab, node).count("adopted 1 route(s)")
        lab.start_router(node)

        async def restarted() -> bool:
            lab.check_alive()
            return log_of(lab, node).count("adopted 1 route(s)") > adopted

        await until(f"router on {node.name} adopts its route", restarted, 60)
        await until(f"router on {node.name} is ready", lambda: _ready(node), 30)
        await asyncio.sleep(1.0 * SLOW)
        during = list(monitor.lines)
        # The monitor sees writes (a control): a foreign route, made and removed by hand.
        NetNS(node.ns).ip("route", "add", "192.0.2.0/24", "via", f"{UNDERLAY}.254")
        NetNS(node.ns).ip("route", "del", "192.0.2.0/24", "via", f"{UNDERLAY}.254")
        await asyncio.sleep(0.5 * SLOW)
    finally:
        lines = await monitor.stop()
    assert during == []
    assert any("192.0.2.0/24" in line for line in lines), lines
    assert NetNS(node.ns).ip("-d", "route", "show", "table", "main").stdout == before


async def _ready(node: Node) -> bool:
    return (await readyz(node))[0] == 200


@HOST_ONLY
async def test_the_routers_follow_the_hubs_internal_ip_in_place_and_say_when_it_is_off_link(
    path: Path_,
) -> None:
    lab, admin, hub, nodes, spokes = path.lab, path.admin, path.hub, path.nodes, path.spokes

    def move(internal: str) -> None:
        addresses = [
            {"type": "InternalIP", "address": internal},
            {"type": "ExternalIP", "address": hub.public},
        ]
        admin.patch_node(hub.name, {"status": {"addresses": addresses}}, status=True)

    moved = f"{UNDERLAY}.100"
    NetNS(hub.ns).ip("address", "add", f"{moved}/24", "dev", "eth0")
    monitors = [await RouteMonitor.start(node) for node in nodes]
    stream = await PingStream.start(NetNS(nodes[1].ns), spokes[1].wg_address, interval=0.01)
    try:
        await stream.wait_for_replies(20)
        move(moved)
        for node in nodes:

            async def followed(node: Node = node) -> bool:
                return our_routes(node) == f"{OVERLAY} via {moved} dev eth0"

            await until(f"{node.name} routes via {moved}", followed, 30)
        await stream.wait_for_replies(len(stream.replies) + 50)
    finally:
        result = await stream.stop()
        writes = [await monitor.stop() for monitor in monitors]
    assert stream.missing == set(), result.output[-500:]
    for lines in writes:
        # One write per router: the route replaced in place, never deleted and re-added.
        assert lines == [f"{OVERLAY} via {moved} dev eth0 proto 87"], lines

    # Off the link: the kernel cannot route via it; the routers say so and keep routes.
    off_link = "198.18.9.1"
    move(off_link)
    for node in nodes:

        async def refused(node: Node = node) -> bool:
            status, body = await readyz(node)
            return status == 503 and any("not on this node's link" in p for p in body["problems"])

        await until(f"{node.name} reports the hub off its link", refused, 30)
        assert our_routes(node) == f"{OVERLAY} via {moved} dev eth0"
        assert f"InternalIP {off_link} is not on this node's link" in log_of(lab, node)
        assert "source-destination check off" in log_of(lab, node)

    move(f"{UNDERLAY}.1")
    for node in nodes:
        await until(f"{node.name} is ready again", functools.partial(_ready, node), 30)
        assert our_routes(node) == f"{OVERLAY} via {UNDERLAY}.1 dev eth0"
        result = await lab.ping(node, spokes[0].wg_address, count=3)
        assert result.received == 3, result.output
    NetNS(hub.ns).ip("address", "del", f"{moved}/24", "dev", "eth0")


@HOST_ONLY
async def test_router_down_removes_its_routes_and_nothing_else(path: Path_) -> None:
    lab, node = path.lab, path.nodes[1]
    ns = NetNS(node.ns)
    # Others' routes: one of our protocol without a gateway (the kind a hub or spoke owns
    # on its WireGuard interface) and one of another protocol with a gateway.
    ns.ip("route", "add", "198.51.100.0/24", "dev", "eth0", "proto", "87")
    ns.ip("route", "add", "192.0.2.0/24", "via", f"{UNDERLAY}.254", "proto", "static")
    lab.stop_process(node)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WG_", "KUBE"))}
    done = await asyncio.to_thread(
        subprocess.run,
        ns.argv(sys.executable, "-m", "wgkube", "router", "--down"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * SLOW,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"removed 1 route(s): {OVERLAY} via {UNDERLAY}.1" in done.stderr
    assert our_routes(node) == "198.51.100.0/24 dev eth0 scope link"
    kept = ns.ip("route", "show", "192.0.2.0/24").stdout.strip()
    assert kept == f"192.0.2.0/24 via {UNDERLAY}.254 dev eth0 proto static"
    assert not await reaches(node, path.spokes[0].wg_address)

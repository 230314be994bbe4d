"""What the benchmark scenarios share: peers, the API emulator and hub processes, the
plain-client baseline, kernel observation and statistics.

Everything here runs in the network namespace of the calling process: the host suite
runs inside a throw-away namespace (see bench.run), so the API emulator (127.0.0.1 of
that namespace), the hub, wireguard-go, its routes and the baseline devices never touch
the host's own network.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wgkube.domain.keys import PrivateKey
from wgkube.kernel.port import ROUTE_PROTOCOL

PREFIX = "wireguard.kube/"
HUB_NODE = "bench-hub"
HUB_ADDRESS = "100.96.0.1/32"
HUB_UNDERLAY = "198.18.0.1"
"""Published as the hub's ExternalIP (benchmark range 198.18.0.0/15); nothing dials it."""
PEER_BASE = ipaddress.IPv4Address("100.64.0.0")
"""Peer i has allowed-ips PEER_BASE + i + 1 (/32); incremental changes move to MOVED_BASE."""
MOVED_BASE = ipaddress.IPv4Address("100.80.0.0")
SOCKET_DIR = Path("/var/run/wireguard")
APPLYING = re.compile(r"applying (\d+) change")

_started = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr, so stdout keeps only the result table."""
    print(f"[bench {time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- peers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    key: str
    """Public key, base64."""
    allowed: str


def peer_allowed(i: int, base: ipaddress.IPv4Address = PEER_BASE) -> str:
    return f"{base + i + 1}/32"


def make_peers(count: int, *, start: int = 0, prefix: str = "peer") -> list[Peer]:
    return [
        Peer(f"{prefix}-{i:05d}", PrivateKey.generate().public_key().b64, peer_allowed(i))
        for i in range(start, start + count)
    ]


def peer_annotations(peer: Peer) -> dict[str, str]:
    return {PREFIX + "public-key": peer.key, PREFIX + "allowed-ips": peer.allowed}


IMAGES = (
    "kube-proxy",
    "pause",
    "coredns/coredns",
    "cilium/cilium",
    "etcd",
    "node-exporter",
    "fluent-bit",
    "csi-node-driver",
    "metrics-agent",
    "istio/proxyv2",
)
"""Images a kubelet lists in a Node's status."""


def kubelet_status(name: str, index: int) -> dict[str, Any]:
    """A Node's status as a kubelet writes it: conditions, addresses, capacity, node info
    and an images list (about 5 KB of JSON), so the API and the hub carry real weight."""
    stamp = "2026-01-01T00:00:00Z"
    conditions = [
        {
            "type": kind,
            "status": "True" if kind == "Ready" else "False",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
            "reason": f"Kubelet{'Ready' if kind == 'Ready' else 'Has' + kind}",
            "message": f"kubelet is posting {kind} status",
        }
        for kind in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
    ]
    images = [
        {
            "names": [
                f"registry.k8s.io/{image}@sha256:{secrets.token_hex(32)}",
                f"registry.k8s.io/{image}:v1.31.{index % 7}",
            ],
            "sizeBytes": 10_000_000 + index,
        }
        for image in IMAGES
    ]
    resources = {"cpu": "8", "memory": "32780552Ki", "pods": "110", "ephemeral-storage": "100G"}
    return {
        "conditions": conditions,
        "addresses": [
            {
                "type": "InternalIP",
                "address": f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}",
            },
            {"type": "Hostname", "address": name},
        ],
        "capacity": resources,
        "allocatable": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": secrets.token_hex(16),
            "systemUUID": str(uuid.uuid4()),
            "bootID": str(uuid.uuid4()),
            "kernelVersion": "6.1.0-28-amd64",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "containerRuntimeVersion": "containerd://1.7.22",
            "kubeletVersion": "v1.31.4",
            "kubeProxyVersion": "v1.31.4",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "images": images,
    }


def peer_node(peer: Peer, index: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": peer.name,
            "labels": {
                PREFIX + "peer": "true",
                "kubernetes.io/hostname": peer.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m5.2xlarge",
                "topology.kubernetes.io/zone": f"zone-{index % 3}",
            },
            "annotations": {
                **peer_annotations(peer),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {
            "podCIDR": f"10.244.{index % 256}.0/24",
            "podCIDRs": [f"10.244.{index % 256}.0/24"],
        },
        "status": kubelet_status(peer.name, index),
    }


def hub_node() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": HUB_NODE},
        "spec": {},
        "status": {"addresses": [{"type": "ExternalIP", "address": HUB_UNDERLAY}]},
    }


# -- statistics -----------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {
        "n": float(len(samples)),
        "min": min(samples),
        "p50": percentile(samples, 0.5),
        "p95": percentile(samples, 0.95),
        "p99": percentile(samples, 0.99),
        "max": max(samples),
        "mean": sum(samples) / len(samples),
    }


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 0.5)


# -- processes ------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def time_when(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.002, what: str = ""
) -> float:
    """Poll until `predicate()` holds; the perf_counter of the poll that saw it."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if predicate():
            return now
        if now > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM the process group started with `start_new_session`, SIGKILL after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBE", "WG_", "NODE_NAME", "ANNOTATION_PREFIX"))
    }
    env.update(extra)
    return env


class ApiProcess:
    """`python -m wgkube.testing.apiserver` on 127.0.0.1 of the current namespace."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.kubeconfig = workdir / f"api-{self.port}.kubeconfig"
        self.log_path = workdir / f"api-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ApiProcess:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wgkube.testing.apiserver",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--token",
                    self.token,
                    # Watches that fall behind during a burst resume instead of relisting.
                    "--history-size",
                    "50000",
                ],
                env=child_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: "serving at" in self.log_path.read_text() or self._dead(),
            timeout=60,
            what="the API emulator",
        )
        if self._dead():
            raise RuntimeError(f"the API emulator exited:\n{self.log_path.read_text()}")
        return self

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    # -- plain HTTP (urllib), as a minimal client would do it --------------------------------
    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type or "application/json")
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)

    def list_peer_nodes(self) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"{PREFIX}peer=true")
        items: list[dict[str, Any]] = self.request(
            "GET", f"/api/v1/nodes?labelSelector={selector}"
        )["items"]
        return items

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> None:
        self.request(
            "PATCH", f"/api/v1/nodes/{name}", patch, content_type="application/merge-patch+json"
        )

    def create_node(self, body: Mapping[str, Any]) -> None:
        self.request("POST", "/api/v1/nodes", body)

    def create_nodes(self, bodies: Sequence[Mapping[str, Any]], concurrency: int = 8) -> float:
        """Create the Nodes over HTTP, `concurrency` requests in flight; the seconds it took."""
        return asyncio.run(self._create_all(bodies, concurrency))

    async def _create_all(self, bodies: Sequence[Mapping[str, Any]], concurrency: int) -> float:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        started = time.perf_counter()
        todo = iter(bodies)
        async with aiohttp.ClientSession(headers=headers) as session:

            async def worker() -> None:
                for body in todo:
                    async with session.post(self.url + "/api/v1/nodes", json=body) as resp:
                        if resp.status >= 300:
                            raise RuntimeError(f"create node: {resp.status} {await resp.text()}")
                        await resp.read()

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


@dataclass
class HubProcess:
    """A real `wg-kube hub` process (userspace or kernel backend) against an ApiProcess."""

    workdir: Path
    api: ApiProcess
    ifname: str
    backend: str = "userspace"
    debounce: float | None = None
    """None: the product default (0.2 s)."""
    listen_port: int = 51820
    probe_port: int = field(default_factory=free_port)
    profile: Path | None = None
    """Run the hub under pyinstrument, writing a text profile here when it stops."""
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    log_path: Path = field(init=False)
    runs: int = 0

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"hub-{self.ifname}-0.log"

    def start(self) -> float:
        """Spawn the hub; returns the perf_counter time just before the spawn."""
        self.log_path = self.workdir / f"hub-{self.ifname}-{self.runs}.log"
        self.runs += 1
        profiler = []
        if self.profile is not None:
            profiler = ["-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(self.profile)]
        argv = [
            sys.executable,
            *profiler,
            "-m",
            "wgkube",
            "hub",
            "--backend",
            self.backend,
            "--interface",
            self.ifname,
            "--key-dir",
            str(self.workdir / "keys"),
            "--listen-port",
            str(self.listen_port),
            "--address",
            HUB_ADDRESS,
            "--probe-address",
            f"127.0.0.1:{self.probe_port}",
        ]
        if self.debounce is not None:
            argv += ["--debounce", str(self.debounce)]
        env = child_env(KUBECONFIG=str(self.api.kubeconfig), NODE_NAME=HUB_NODE)
        with self.log_path.open("wb") as out:
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self.started

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the hub is not running")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"the hub exited:\n{self.log()[-3000:]}")

    def stop(self, *, only_hub: bool = False) -> None:
        """Stop the process group (wireguard-go, which the hub starts, stays in it).

        `only_hub`: SIGTERM the hub process alone, as a restart of the operator would;
        a userspace device keeps running.
        """
        if self.proc is None:
            return
        if only_hub and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        stop_process(self.proc)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def applied(self) -> list[int]:
        """K of every "applying K change(s)" line of the current run's log."""
        return [int(m) for m in APPLYING.findall(self.log())]

    def readyz(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.probe_port}/readyz", timeout=5
            ) as resp:
                data: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as exc:
            data = json.load(exc)
        except (OSError, ValueError):
            return None
        return data

    def memory_kib(self) -> dict[str, int]:
        """VmHWM (peak RSS) and VmRSS of the hub process, KiB."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
        return out


# -- the kernel, as seen from outside the product ---------------------------------------------


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def wg_peer_count(ifname: str) -> int:
    proc = subprocess.run(["wg", "show", ifname, "peers"], capture_output=True, text=True)
    return sum(1 for line in proc.stdout.splitlines() if line) if proc.returncode == 0 else -1


def wg_allowed_ips(ifname: str) -> dict[str, str]:
    """Public key -> allowed IPs as `wg show IF allowed-ips` prints them."""
    out = run(["wg", "show", ifname, "allowed-ips"])
    return {key: rest.strip() for key, _, rest in (ln.partition("\t") for ln in out.splitlines())}


def route_count(ifname: str) -> int:
    proc = subprocess.run(
        ["ip", "-4", "route", "show", "table", "main", "proto", str(ROUTE_PROTOCOL), "dev", ifname],
        capture_output=True,
        text=True,
    )
    return sum(1 for line in proc.stdout.splitlines() if line) if proc.returncode == 0 else -1


def wait_device(
    ifname: str,
    peers: int,
    *,
    timeout: float,
    interval: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> float:
    """Poll until `ifname` holds exactly `peers` peers and owned routes; the perf_counter then.

    Routes are checked first: the product adds them after the peers, so they finish last.
    """
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if route_count(ifname) == peers and wg_peer_count(ifname) == peers:
            return now
        if alive is not None:
            alive()
        if now > deadline:
            raise TimeoutError(
                f"{ifname}: {wg_peer_count(ifname)} peers, {route_count(ifname)} routes after "
                f"{timeout:.0f}s; wanted {peers}"
            )
        time.sleep(interval)


class RouteProbe:
    """Is there a route to an address through a given link? One netlink request per ask."""

    def __init__(self) -> None:
        self.ipr = IPRoute()

    def index(self, ifname: str) -> int:
        (msg,) = self.ipr.link("get", ifname=ifname)
        return int(msg["index"])

    def via(self, address: str, index: int) -> bool:
        try:
            (msg, *_) = self.ipr.route("get", dst=address)
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return False
            raise
        return bool(msg.get_attr("RTA_OIF") == index)

    def close(self) -> None:
        self.ipr.close()


def socket_path(ifname: str) -> Path:
    return SOCKET_DIR / f"{ifname}.sock"


def start_wireguard_go(ifname: str) -> None:
    """wireguard-go daemonizes; wait until its UAPI answers, as `wg-quick` would."""
    run(["wireguard-go", ifname])
    wait_until(
        lambda: subprocess.run(["wg", "show", ifname], capture_output=True).returncode == 0,
        timeout=10,
        interval=0.005,
        what=f"wireguard-go for {ifname}",
    )


def delete_link(ifname: str) -> None:
    """Delete the link; for wireguard-go, wait until the daemon is gone with its socket."""
    subprocess.run(["ip", "link", "del", ifname], capture_output=True)
    path = socket_path(ifname)
    deadline = time.monotonic() + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def link_exists(ifname: str) -> bool:
    return subprocess.run(["ip", "link", "show", ifname], capture_output=True).returncode == 0


# -- the baseline: the floor for the same job, with plain tools ------------------------------


def wg_set_argv(ifname: str, peers: Iterable[tuple[str, str]]) -> list[str]:
    argv = ["wg", "set", ifname]
    for key, allowed in peers:
        argv += ["peer", key, "allowed-ips", allowed]
    return argv


def ip_batch(ifname: str, routes: Iterable[str], *, address: str | None = None) -> str:
    lines = []
    if address is not None:
        lines += [f"address add {address} dev {ifname}", f"link set {ifname} up"]
    lines += [f"route add {net} dev {ifname} proto {ROUTE_PROTOCOL}" for net in routes]
    return "\n".join(lines) + "\n"


def baseline_apply(ifname: str, peers: Sequence[tuple[str, str]], *, address: str | None) -> None:
    """All peers in one `wg set`, then the address, link up and all routes in one `ip -batch`."""
    if peers:
        run(wg_set_argv(ifname, peers))
    run(["ip", "-batch", "-"], stdin=ip_batch(ifname, (a for _, a in peers), address=address))


def peers_of(nodes: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for node in nodes:
        ann = node.get("metadata", {}).get("annotations") or {}
        key, allowed = ann.get(PREFIX + "public-key"), ann.get(PREFIX + "allowed-ips")
        if key and allowed:
            out.append((key, allowed))
    return out


def baseline_converge(api: ApiProcess, ifname: str, key_file: Path, port: int) -> float:
    """A fresh device -> all peers and routes, the plain way; returns seconds.

    Start wireguard-go, set the key and port, LIST the peer Nodes once over HTTP with
    urllib, then one `wg set` for every peer and one `ip -batch` for address and routes.
    """
    started = time.perf_counter()
    start_wireguard_go(ifname)
    run(["wg", "set", ifname, "private-key", str(key_file), "listen-port", str(port)])
    peers = peers_of(api.list_peer_nodes())
    baseline_apply(ifname, peers, address=HUB_ADDRESS)
    return time.perf_counter() - started


def write_key(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(PrivateKey.generate().b64 + "\n")
    return path


def unique_ifname(prefix: str) -> str:
    # The UAPI socket path is global (/var/run/wireguard/NAME.sock): names must be unique
    # across namespaces and runs; 15 characters at most.
    return f"{prefix}{secrets.token_hex(3)}"[:15]


# -- kernel writes, counted from outside the product -----------------------------------------


def wg_dump(ifname: str) -> dict[str, tuple[str, ...]]:
    """Public key -> (preshared key, endpoint, allowed ips, keepalive) from `wg show dump`:
    the peer state a write can change (handshakes and counters left out)."""
    out = run(["wg", "show", ifname, "dump"])
    peers: dict[str, tuple[str, ...]] = {}
    for line in out.splitlines()[1:]:  # the first line is the device
        fields = line.split("\t")
        if len(fields) >= 8:
            peers[fields[0]] = (fields[1], fields[2], fields[3], fields[7])
    return peers


def peers_changed(
    before: Mapping[str, tuple[str, ...]], after: Mapping[str, tuple[str, ...]]
) -> int:
    """Peers added, removed or changed between two dumps."""
    return sum(1 for key in set(before) | set(after) if before.get(key) != after.get(key))


class RouteMonitor:
    """`ip -o monitor route` in the current namespace: every route the kernel adds or
    deletes on a link, as rtnetlink announces it (not as the product says it did)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / f"route-monitor-{secrets.token_hex(3)}.log"
        self._out = self.path.open("wb")
        self.proc = subprocess.Popen(
            ["ip", "-o", "monitor", "route"], stdout=self._out, stderr=subprocess.DEVNULL
        )
        time.sleep(0.2)  # subscribed before anything is counted

    def mark(self) -> int:
        self._out.flush()
        return self.path.stat().st_size

    def events(self, ifname: str, since: int) -> int:
        """Route events through `ifname` after the mark `since`."""
        time.sleep(0.05)  # let the monitor write out what the kernel already announced
        with self.path.open("rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
        return sum(1 for line in text.splitlines() if f"dev {ifname} " in line + " ")

    def close(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._out.close()


_SYSCALL = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(\d+\.\d+)\s+(?:sendto|sendmsg|write)\((.*)$")


_NLM_FLAGS = {
    "NLM_F_REQUEST": 0x1, "NLM_F_MULTI": 0x2, "NLM_F_ACK": 0x4, "NLM_F_ECHO": 0x8,
    "NLM_F_ROOT": 0x100, "NLM_F_MATCH": 0x200, "NLM_F_ATOMIC": 0x400, "NLM_F_DUMP": 0x300,
    "NLM_F_REPLACE": 0x100, "NLM_F_EXCL": 0x200, "NLM_F_CREATE": 0x400, "NLM_F_APPEND": 0x800,
}  # fmt: skip
"""Names strace gives nlmsg_flags bits (a GET's and a NEW's share values)."""
NLM_F_DUMP = 0x300


def _nlmsg_flags(text: str) -> int:
    bits = 0
    for name in text.split("|"):
        name = name.strip()
        bits |= _NLM_FLAGS.get(name) or (int(name, 16) if name.startswith("0x") else 0)
    return bits


def is_kernel_read(args: str) -> bool:
    """Whether one traced send (strace's rendering of its arguments) asks the kernel or
    wireguard-go for state: a netlink dump (routes, links, addresses, a WireGuard device
    over genetlink: NLM_F_ROOT|NLM_F_MATCH, which strace names, or shows as 0x300 before
    it knows the socket's protocol) or a UAPI `get=1`. A NEW request's flags never hold
    both bits (NLM_F_REPLACE|NLM_F_EXCL would be a contradiction)."""
    if any(
        _nlmsg_flags(flags) & NLM_F_DUMP == NLM_F_DUMP
        for flags in re.findall(r"nlmsg_flags=([^,}]+)", args)
    ):
        return True
    parts = args.split(",", 2)
    return len(parts) > 1 and parts[1].strip().startswith('"get=1\\n')


class KernelReads:
    """Reads the hub asks of the kernel, seen from outside: `strace -f -p PID` on its
    sends (netlink dumps, UAPI `get=1`), each with its wall-clock time. The tracer slows
    the process it stops at each send, so nothing timed is measured while it runs."""

    def __init__(self, workdir: Path, pid: int) -> None:
        self.path = workdir / f"strace-{pid}-{secrets.token_hex(3)}.log"
        self.proc = subprocess.Popen(
            [
                "strace",
                "-f",
                "-ttt",
                "-qq",
                "-s",
                "24",
                "-e",
                "trace=sendto,sendmsg,write",
                "-e",
                "signal=none",
                "-o",
                str(self.path),
                "-p",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # attached to every thread before anything is counted
        if self.proc.poll() is not None:
            raise RuntimeError(f"strace could not attach to {pid} (exit {self.proc.returncode})")

    def between(self, since: float, until: float) -> int:
        """Reads sent in [since, until] (time.time() seconds)."""
        count = 0
        with self.path.open(errors="replace") as fh:
            for line in fh:
                found = _SYSCALL.match(line)
                if found and since <= float(found[1]) <= until and is_kernel_read(found[2]):
                    count += 1
        return count

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # detaches; the traced process goes on
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def idle_python_kib() -> int:
    """VmHWM of a Python process that imports what the hub imports and does nothing:
    the memory reference for the hub's RSS."""
    code = (
        "import wgkube.operator.main, kopf, pyroute2, kubernetes_asyncio, aiohttp, pydantic\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmHWM'): print(line.split()[1])\n"
    )
    return int(run([sys.executable, "-c", code]).strip())


# -- a part of the bench in a namespace of its own -------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def json_in_netns(
    prefix: str, module: str, args: Sequence[str], budget: float, what: str
) -> dict[str, Any]:
    """`python -m module args --json OUT` inside a throw-away namespace: its JSON, or a
    failed record; whatever is left in the namespace is killed after."""
    from wgkube.testing.netns import create_netns, delete_netns

    ns = create_netns(prefix)
    out = Path(tempfile.mkstemp(prefix=f"wgkube-{prefix}-", suffix=".json")[1])
    try:
        argv = ns.argv(sys.executable, "-m", module, *args, "--json", str(out))
        proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            return {"status": "failed", "error": f"{what} exceeded {budget:.0f}s"}
        if code != 0 or out.stat().st_size == 0:
            return {"status": "failed", "error": f"{what} exited with {code}"}
        data: dict[str, Any] = json.loads(out.read_text())
        return data
    finally:
        out.unlink(missing_ok=True)
        _empty_namespace(ns.name)
        delete_netns(ns)


def _empty_namespace(name: str) -> None:
    """Kill what the suite left running in its namespace and drop their UAPI sockets."""
    links = subprocess.run(
        ["ip", "-n", name, "-o", "link", "show"], capture_output=True, text=True
    ).stdout
    names = [ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines() if ":" in ln]
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    for ifname in names:
        if ifname.startswith("wgb"):
            with contextlib.suppress(FileNotFoundError):
                (SOCKET_DIR / f"{ifname}.sock").unlink()

"""A hostile-input campaign against a running hub: the real `wg-kube hub` (wireguard-go in a
network namespace, the API emulator) with valid peers, then about a hundred Nodes carrying
values the codec refuses, values that conflict, and values only the kernel refuses (injected
by a fault-injecting kernel adapter, tests.support.faulty_hub), then mutated in place.

The hub must stay alive and ready, never log a traceback, never touch the valid peers or
their routes, post exactly one Warning Event per distinct fault of each Node, and take a
fixed Node in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import shutil
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import FAULTS_ENV, Fault, faults_to_env
from tests.support.procs import Process, base_env
from wgkube.diff.model import ObservedState
from wgkube.domain.annotations import Keys, decode_peer
from wgkube.domain.errors import AnnotationError
from wgkube.domain.keys import PrivateKey
from wgkube.testing.lab import Lab, Node
from wgkube.testing.netns import can_make_namespaces

pytestmark = [pytest.mark.userspace, pytest.mark.slow]

PREFIX = "wireguard.kube/"
PK, EP, AIPS = PREFIX + "public-key", PREFIX + "endpoint", PREFIX + "allowed-ips"
REFUSED = ipaddress.ip_network("10.66.0.0/16")
"""Allowed IPs in here are refused by the (injected) kernel: errno EINVAL."""
FOREIGN = ipaddress.ip_network("10.77.0.0/16")
"""Routes in here belong to someone else (an injected RouteConflict)."""
FAULTS = [Fault("peer", REFUSED), Fault("route", FOREIGN, error="conflict")]
HOSTILE_NODES = 100


def new_key() -> str:
    return PrivateKey.generate().public_key().b64


VALID = {f"valid-{i}": (new_key(), f"10.10.{i}.0/24,100.96.0.{10 + i}/32") for i in range(3)}


def hand_picked() -> list[dict[str, str]]:
    """One annotation set per fault class: codec refusals, conflicts, kernel refusals."""
    dup_key = VALID["valid-0"][0]
    many = ",".join(f"10.{20 + i // 256}.{i % 256}.0/24" for i in range(3000))
    return [
        {PK: new_key(), AIPS: "fe80::1%eth0/128"},
        {PK: new_key(), AIPS: "10.30.0.0/24", EP: "[fe80::1%eth0]:51820"},
        {PK: new_key(), AIPS: "10.30.1.0/24", EP: "[::1]"},
        {PK: new_key(), AIPS: "10.30.2.0/24", EP: "[::1]:51820"},
        {PK: new_key(), AIPS: "10.30.3.0/24", EP: "0.0.0.0:51820"},
        {PK: new_key(), AIPS: "10.30.4.0/24", EP: "224.0.0.1:51820"},
        {PK: new_key(), AIPS: "10.30.5.0/24", EP: "255.255.255.255:51820"},
        {PK: new_key(), AIPS: "10.30.6.0/24", EP: "[::ffff:198.18.0.9]:51820"},
        {PK: new_key(), AIPS: "10.30.7.0/24", EP: "example.com:51820"},
        {PK: new_key(), AIPS: "10.30.8.0/24", EP: "198.18.0.9:0"},
        {PK: new_key(), AIPS: "0.0.0.0/0"},
        {PK: new_key(), AIPS: "::/0"},
        {PK: new_key(), AIPS: "127.0.0.0/8"},
        {PK: new_key(), AIPS: "224.0.0.0/4"},
        {PK: new_key(), AIPS: many},
        {PK: new_key(), AIPS: "10.30.9.7/24"},
        {PK: new_key(), AIPS: "10.30.10.0/33"},
        {PK: "not-a-key", AIPS: "10.30.11.0/24"},
        {PK: "", AIPS: "10.30.12.0/24"},
        {PK: dup_key, AIPS: "10.30.13.0/24"},  # the valid (older) Node keeps its key
        {PK: new_key(), AIPS: "10.10.0.128/25"},  # inside a valid peer's prefix
        {PK: new_key(), AIPS: "100.96.0.1/32"},  # the hub's own address
        {PK: new_key(), AIPS: "10.66.1.0/24"},  # injected: the kernel refuses
        {PK: new_key(), AIPS: "10.30.14.0/24,10.66.2.0/24"},
        {PK: new_key(), AIPS: "10.77.1.0/24"},  # injected: a foreign route
        {PK: new_key(), AIPS: "10.30.15.0/24,10.77.2.0/24"},
    ]


def codec_accepts(annotations: dict[str, str]) -> bool:
    try:
        decode_peer({"metadata": {"name": "probe", "annotations": annotations}}, Keys())
    except AnnotationError:
        return False
    return True


def generated(rng: random.Random, n: int) -> list[dict[str, str]]:
    """Random hostile values: text, Unicode, boundary numbers, zone indices, huge lists."""
    alphabet = "0123456789abcdef:./%,[] \t\u0660\u0966\uff10\u200b-xX"
    out: list[dict[str, str]] = []
    for i in range(n):
        kind = i % 6
        base = f"10.40.{i}.0/24"
        if kind == 0:
            values = {PK: new_key(), AIPS: "1"}
            while codec_accepts(values):  # "1" is 0.0.0.1/32: noise may be a value
                noise = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
                values = {PK: values[PK], AIPS: noise}
            out.append(values)
        elif kind == 1:
            port = rng.choice([-1, 0, 65536, 99999, 10**20])
            out.append({PK: new_key(), AIPS: base, EP: f"198.18.0.{rng.randint(1, 250)}:{port}"})
        elif kind == 2:
            length = rng.choice([33, 64, 129, -1, 999])
            out.append({PK: new_key(), AIPS: f"{base},10.41.{i}.0/{length}"})
        elif kind == 3:
            out.append({PK: new_key(), AIPS: f"{base},fd00:{i:x}::%{rng.randint(0, 9)}/64"})
        elif kind == 4:
            out.append({PK: new_key(), AIPS: f"10.66.{100 + i}.0/24"})  # injected refusal
        else:
            out.append({PK: new_key()[:-2] + rng.choice(["!!", "==", "\u00e9="]), AIPS: base})
    return out


def mutated(i: int) -> dict[str, str | None]:
    """Another hostile value set in place, whose fault differs from the Node's first one."""
    options: list[dict[str, str | None]] = [
        {AIPS: f"fe80::{i:x}%eth{i}/128", EP: None},
        {AIPS: f"10.66.{200 + i // 250}.{i % 250}/32", EP: None},  # injected refusal
        {AIPS: f"10.77.{i}.0/24", EP: None},  # injected foreign route
        {AIPS: f"10.51.{i}.0/24", EP: f"[::1]:{1000 + i}"},
        {AIPS: f"0.0.0.0/0,10.50.{i}.0/24", EP: None},
    ]
    return {PK: new_key(), **options[i % len(options)]}


def fixed(i: int) -> dict[str, str | None]:
    return {PK: new_key(), AIPS: f"10.60.{i}.0/24", EP: f"198.18.0.{200 + i}:51820"}


def readyz(node: Node) -> int:
    try:
        with urllib.request.urlopen(f"http://{node.underlay}:9798/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def until(
    what: str,
    probe: Callable[[], Awaitable[bool]],
    within: float,
    explain: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {within:.0f}s: {what} {explain()}")


def valid_view(observed: ObservedState) -> dict[str, Any]:
    """The valid peers and their routes as the kernel has them."""
    keys = {key for key, _ in VALID.values()}
    peers = {
        k.b64: sorted(map(str, p.allowed_ips)) for k, p in observed.peers.items() if k.b64 in keys
    }
    nets = {ipaddress.ip_network(n) for _, a in VALID.values() for n in a.split(",")}
    return {"peers": peers, "routes": sorted(str(r) for r in observed.routes if r in nets)}


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    reason = can_make_namespaces()
    if reason is None and shutil.which("wireguard-go") is None:
        reason = "wireguard-go is not installed"
    if reason is not None:
        pytest.skip(reason)
    lab = Lab(tmp_path / "lab", backend="userspace")
    try:
        yield lab
    finally:
        await lab.close_kernels()
        lab.clean()


async def test_a_hundred_hostile_nodes_block_nobody_and_each_fault_is_one_event(
    lab: Lab, tmp_path: Path
) -> None:
    lab.make_bridge()
    lab.start_api(in_process=True)
    api = lab.api
    assert api is not None
    hub = Node("hub", "hub", 1)
    lab.add_node(hub)
    for name, (key, allowed) in VALID.items():
        api.create_node(
            name,
            labels={PREFIX + "peer": "true"},
            annotations={PK: key, AIPS: allowed, EP: f"198.18.0.{100 + int(name[-1])}:51820"},
        )
    argv = [
        "hub",
        "--backend=userspace",
        f"--node-name={hub.name}",
        f"--interface={hub.ifname}",
        f"--kubeconfig={lab.kubeconfig}",
        f"--private-key-file={lab.workdir / 'keys' / 'hub.key'}",
        "--allowed-ips=100.96.0.0/24",
        f"--probe-address={hub.underlay}:9798",
        "--resync-interval=5",
    ]
    env = base_env(**{FAULTS_ENV: faults_to_env(FAULTS)})
    log_path = lab.workdir / "logs" / "hub.log"
    proc = Process(
        argv, env=env, log_path=log_path, netns=hub.ns, module="tests.support.faulty_hub"
    )
    try:
        kernel = await lab.kernel(hub)

        async def valid_in() -> bool:
            view = valid_view(await kernel.observe(hub.ifname))
            return len(view["peers"]) == 3 and len(view["routes"]) == 6

        await until("the valid peers and their routes are in place", valid_in, within=30)
        baseline = valid_view(await kernel.observe(hub.ifname))
        # creationTimestamp has one-second resolution and a tie goes to the name
        # ("hostile-..." before "valid-..."): make the hostile Nodes younger.
        await asyncio.sleep(1.1)

        async def check() -> None:
            assert proc.proc.poll() is None, f"the hub exited:\n{proc.log[-3000:]}"
            assert readyz(hub) == 200, proc.log[-3000:]
            assert valid_view(await kernel.observe(hub.ifname)) == baseline

        # -- a hundred hostile Nodes ------------------------------------------------------
        values = hand_picked()
        values += generated(random.Random(12), HOSTILE_NODES - len(values))
        hostile = {f"hostile-{i:03d}": v for i, v in enumerate(values)}
        for name, annotations in hostile.items():
            api.create_node(name, labels={PREFIX + "peer": "true"}, annotations=annotations)
        expected = Counter({name: 1 for name in hostile})

        def warnings() -> Counter[str]:
            return Counter(
                e["involvedObject"]["name"]
                for e in api.events()
                if e.get("type") == "Warning" and e["involvedObject"]["name"] in hostile
            )

        async def all_reported() -> bool:
            return warnings() == expected

        def difference() -> str:
            seen = warnings()
            return f"extra {dict(seen - expected)}, missing {dict(expected - seen)}"

        await until("one Warning Event for each hostile Node", all_reported, 45, difference)
        await check()

        # -- mutated in place: a new fault on every one -------------------------------------
        for i, name in enumerate(hostile):
            change = mutated(i)
            api.patch_node(name, {"metadata": {"annotations": change}})
        expected = Counter({name: 2 for name in hostile})
        await until("a second Warning Event for each mutated Node", all_reported, 45, difference)
        await check()

        # -- fixed: the peers come in, and nothing more is said ----------------------------
        fix = list(hostile)[:10]
        fixed_keys: set[str] = set()
        for i, name in enumerate(fix):
            change = fixed(i)
            fixed_keys.add(str(change[PK]))
            api.patch_node(name, {"metadata": {"annotations": change}})

        async def fixed_in() -> bool:
            observed = await kernel.observe(hub.ifname)
            return fixed_keys <= {k.b64 for k in observed.peers}

        await until("the fixed Nodes' peers are in the kernel", fixed_in, within=30)
        observed = await kernel.observe(hub.ifname)
        assert {str(r) for r in observed.routes} >= {f"10.60.{i}.0/24" for i in range(10)}
        await check()
        # Two resyncs later the count is still one Event per distinct fault.
        await asyncio.sleep(11)
        await check()
        assert warnings() == expected, warnings() - expected
        by_reason = Counter(e["reason"] for e in api.events() if e.get("type") == "Warning")
        assert by_reason["KernelRejected"] > 0, by_reason
        assert by_reason["PeerConflict"] > 0, by_reason
        assert by_reason["InvalidPeerConfig"] > 0, by_reason
        assert "Traceback" not in proc.log
        hostile_keys = {v[PK] for v in values} - fixed_keys - {VALID["valid-0"][0]}
        assert not hostile_keys & {k.b64 for k in observed.peers}
        print(json.dumps(dict(by_reason)))
    finally:
        proc.stop()

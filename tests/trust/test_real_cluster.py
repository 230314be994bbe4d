"""Hub and spokes on a real kube-apiserver with their production identities, bound only by
manifests/: the hub as its ServiceAccount, each spoke as `system:node:<name>` (the
kubelet's own credentials), over real WireGuard: wireguard-go in network namespaces on
the host (marker `userspace`) and kernel WireGuard inside the test VM (marker `kernel`).

The control plane serves on the lab's bridge address so that processes in the namespaces
reach it. Needs root, WireGuard and the control plane binaries; run under the lab lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import require_control_plane
from tests.system.test_hub_and_spokes import skip_unless
from wgkube.domain.announcement import NAME, NAMESPACE, decode
from wgkube.domain.keys import PrivateKey
from wgkube.testing._client import ApiError, KubeHttpClient
from wgkube.testing.apiserver import RealApiServer
from wgkube.testing.controlplane import ControlPlane, node_user
from wgkube.testing.lab import HUB_WG, SLOW, UNDERLAY, Lab, Node
from wgkube.testing.netns import NetNS

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "wireguard.kube/"
POLICY_MESSAGE = "wg-kube: nodes may not add, change or remove the hub label"

pytestmark = pytest.mark.realapi


async def until(what: str, probe: Callable[[], Awaitable[bool]], within: float) -> None:
    deadline = time.monotonic() + within * SLOW
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {within * SLOW:.0f}s: {what}")


def label_self_hub(plane: ControlPlane, name: str) -> ApiError | None:
    """A node, with its own credentials, labels its own Node hub; the refusal, if any."""
    client = KubeHttpClient(plane.kubeconfig_for(node_user(name)))
    try:
        client.patch("nodes", name, {"metadata": {"labels": {PREFIX + "hub": "true"}}})
    except ApiError as exc:
        return exc
    return None


def refusal(plane: ControlPlane, name: str) -> ApiError | None:
    """Poll briefly: a new policy takes a moment to be enforced."""
    deadline = time.monotonic() + 20
    while True:
        refused = label_self_hub(plane, name)
        if refused is not None or time.monotonic() > deadline:
            return refused
        unlabel = {"metadata": {"labels": {PREFIX + "hub": None}}}
        RealApiServer(plane.kubeconfig).patch_node(name, unlabel)
        time.sleep(0.5)


@pytest.fixture
async def lab(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Lab, ControlPlane]]:
    await skip_unless(request.param)
    require_control_plane()
    lab = Lab(tmp_path / "lab", backend=request.param)
    try:
        lab.make_bridge()
        with ControlPlane(host=f"{UNDERLAY}.254", start_timeout=60 * SLOW) as plane:
            yield lab, plane
            await lab.close_kernels()
            lab.clean()
    finally:
        await lab.close_kernels()
        lab.clean()


@pytest.mark.parametrize(
    "lab",
    [
        pytest.param("kernel", marks=pytest.mark.kernel, id="kernel"),
        pytest.param("userspace", marks=pytest.mark.userspace, id="userspace"),
    ],
    indirect=True,
)
async def test_hub_and_spokes_work_with_production_identities_and_refuse_an_impostor_hub(
    lab: tuple[Lab, ControlPlane],
) -> None:
    lab_, plane = lab
    applied = plane.kubectl("apply", "-f", str(ROOT / "manifests"))
    assert applied.returncode == 0, applied.stderr
    admin = RealApiServer(plane.kubeconfig)
    hub = Node("thub", "hub", 1)
    spokes = [Node(f"tspoke-{i}", "spoke", 20 + i) for i in (1, 2)]
    identities = {hub.name: plane.hub_kubeconfig}
    identities |= {s.name: plane.kubeconfig_for(node_user(s.name)) for s in spokes}
    for path in identities.values():
        assert "wg-kube-admin" not in path.read_text()
    lab_.use_api(admin, identities)
    for node in (hub, *spokes):
        lab_.add_node(node)
    # An administrator marks the hub (the policy refuses it from nodes).
    admin.patch_node(hub.name, {"metadata": {"labels": {PREFIX + "hub": "true"}}})
    for node in (hub, *spokes):
        lab_.start_process(node)
    for spoke in spokes:
        await lab_.wait_handshake(spoke, hub, within=60 * SLOW)
        result = await lab_.ping(spoke, HUB_WG, count=3)
        assert result.received == result.transmitted == 3, result.output
    assert await lab_.backend_name(hub) == lab_.backend
    hub_key = lab_.public_key(hub)
    config_map = admin.get("configmaps", NAME, namespace=NAMESPACE)
    assert config_map is not None
    assert [h.public_key.b64 for h in decode(config_map["data"])] == [hub_key]

    # The hub's ExternalIP moves: it republishes; the spokes follow in place.
    NetNS(hub.ns).ip("address", "add", f"{UNDERLAY}.100/24", "dev", "eth0")
    moved = [{"type": "ExternalIP", "address": f"{UNDERLAY}.100"}]
    admin.patch_node(hub.name, {"status": {"addresses": moved}}, status=True)
    for spoke in spokes:

        async def follows(spoke: Node = spoke) -> bool:
            peers = (await lab_.observe(spoke)).peers.values()
            return [str(p.endpoint) for p in peers] == [f"{UNDERLAY}.100:51820"]

        await until(f"{spoke.name} follows the hub's new endpoint", follows, within=30)
        result = await lab_.ping(spoke, HUB_WG, count=3)
        assert result.received == 3, result.output
    if lab_.backend == "kernel":
        # The rest is the API's (admission, who may write the announcement), the same
        # whatever WireGuard runs below: the host's variant covers it, and the emulated
        # VM, where each kubectl call takes seconds, stops here.
        lab_.check_alive()
        return

    # A node that labels itself hub is refused by the admission policy ...
    impostor = "timpostor"
    admin.create_node(impostor)
    refused = refusal(plane, impostor)
    assert refused is not None, "a node labelled itself hub"
    assert refused.code == 403
    assert POLICY_MESSAGE in str(refused.body)

    # ... and without the policy, spokes still follow only what the hub identity wrote.
    removed = plane.kubectl("delete", "validatingadmissionpolicybinding", "wg-kube-hub-label")
    assert removed.returncode == 0, removed.stderr
    fake = PrivateKey.generate().public_key().b64
    own = KubeHttpClient(plane.kubeconfig_for(node_user(impostor)))
    deadline = time.monotonic() + 20
    while label_self_hub(plane, impostor) is not None:
        assert time.monotonic() < deadline, "the policy stayed in force after its removal"
        await asyncio.sleep(0.5)
    annotations = {PREFIX + "public-key": fake, PREFIX + "allowed-ips": "0.0.0.0/0"}
    annotations[PREFIX + "endpoint"] = f"{UNDERLAY}.99:51820"
    own.patch("nodes", impostor, {"metadata": {"annotations": annotations}})
    # The announcement cannot be written with a node's credentials either.
    with pytest.raises(ApiError) as denied:
        own.patch("configmaps", NAME, {"data": {"hubs.json": "{}"}}, namespace=NAMESPACE)
    assert denied.value.code == 403
    # Nothing is supposed to change, so there is no event to wait on: give the spokes
    # several seconds (their watches deliver within a second), then check their kernels.
    await asyncio.sleep(3.0)
    for spoke in spokes:
        peers: list[Any] = list((await lab_.observe(spoke)).peers.values())
        assert [p.public_key.b64 for p in peers] == [hub_key]
        result = await lab_.ping(spoke, HUB_WG, count=3)
        assert result.received == 3, result.output
    lab_.check_alive()
    logs = "".join((lab_.workdir / "logs" / f"{n.name}.log").read_text() for n in (hub, *spokes))
    assert "permission denied" not in logs

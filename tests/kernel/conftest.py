"""Adapters under contract: memory always, userspace in a throw-away namespace on the host,
kernel WireGuard in a throw-away namespace inside the test VM (tests/vm/run.sh)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wgkube.kernel import kernel_wireguard_unavailable, userspace_unavailable
from wgkube.kernel.memory import MemoryKernel
from wgkube.kernel.netlink import NetlinkKernel
from wgkube.kernel.port import Kernel
from wgkube.kernel.userspace import UserspaceKernel
from wgkube.testing.netns import NetNS, can_make_namespaces, create_netns, delete_netns

ADAPTERS = [
    pytest.param("memory", id="memory"),
    pytest.param("userspace", marks=pytest.mark.userspace, id="userspace"),
    pytest.param("kernel", marks=pytest.mark.kernel, id="kernel"),
]


def unique_ifname(prefix: str = "wgk") -> str:
    # wireguard-go's UAPI socket path is global (/var/run/wireguard/NAME.sock), so names
    # must not collide across namespaces; 15 characters at most.
    return f"{prefix}{secrets.token_hex(3)}"


_probed: dict[str, str | None] = {}


async def skip_unless_backend(backend: str) -> None:
    """Skip with the reason when `backend` cannot run here; memory always can."""
    if backend == "memory":
        return
    reason = can_make_namespaces()
    if reason is None and backend == "userspace":
        reason = userspace_unavailable()
    if reason is None and backend == "kernel":
        if "kernel" not in _probed:  # the probe makes a link: once per session is enough
            _probed["kernel"] = await kernel_wireguard_unavailable()
        reason = _probed["kernel"]
    if reason is not None:
        pytest.skip(f"{backend} backend unavailable: {reason}")


def make_adapter(backend: str, ns: NetNS | None, state: Path | None) -> Kernel:
    if backend == "memory":
        return MemoryKernel(state)
    assert ns is not None
    if backend == "userspace":
        return UserspaceKernel(netns=ns.name)
    return NetlinkKernel(netns=ns.name)


@dataclass
class Harness:
    """One adapter kind on one device name, in its own namespace when real."""

    backend: str
    ifname: str
    ns: NetNS | None
    state: Path
    opened: list[Kernel] = field(default_factory=list)

    def adapter(self) -> Kernel:
        """A new adapter on the same device (a restarted process sees the same kernel)."""
        kernel = make_adapter(self.backend, self.ns, self.state)
        self.opened.append(kernel)
        return kernel

    @property
    def real(self) -> bool:
        return self.ns is not None


@pytest.fixture(params=ADAPTERS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    backend: str = request.param
    await skip_unless_backend(backend)
    ns = None if backend == "memory" else create_netns(f"wgk-{backend[:4]}")
    h = Harness(backend, unique_ifname(), ns, tmp_path / "memkernel.json")
    try:
        yield h
    finally:
        if ns is not None:
            # Delete through an adapter first: for wireguard-go this waits for the
            # daemon to drop its socket before the namespace goes.
            cleaner = make_adapter(backend, ns, h.state)
            await cleaner.delete(h.ifname)
            h.opened.append(cleaner)
        for kernel in h.opened:
            await kernel.close()
        if ns is not None:
            delete_netns(ns)

"""`open_kernel` picks the adapter; `auto` prefers kernel WireGuard when a link can be made."""

from __future__ import annotations

import logging

import pytest

from tests.kernel.conftest import skip_unless_backend
from wgkube.domain.errors import BackendUnavailable
from wgkube.kernel import kernel_wireguard_unavailable, open_kernel
from wgkube.kernel.memory import MemoryKernel
from wgkube.kernel.netlink import NetlinkKernel
from wgkube.kernel.userspace import IMPLEMENTATION_ENV, UserspaceKernel
from wgkube.testing.netns import netns


async def test_memory_is_the_in_memory_kernel() -> None:
    kernel = await open_kernel("memory")
    assert isinstance(kernel, MemoryKernel)


@pytest.mark.kernel
async def test_auto_takes_kernel_wireguard_when_a_link_can_be_made(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await skip_unless_backend("kernel")
    with netns("wgk-fac") as ns, caplog.at_level(logging.INFO, logger="wgkube.kernel"):
        kernel = await open_kernel("auto", netns=ns.name)
        await kernel.close()
    assert isinstance(kernel, NetlinkKernel)
    assert "backend auto: kernel WireGuard" in caplog.text


@pytest.mark.userspace
async def test_auto_falls_back_to_userspace_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    await skip_unless_backend("userspace")
    if await kernel_wireguard_unavailable() is None:
        pytest.skip("this kernel has WireGuard, so auto does not fall back")
    with netns("wgk-fac") as ns, caplog.at_level(logging.INFO, logger="wgkube.kernel"):
        kernel = await open_kernel("auto", netns=ns.name)
        await kernel.close()
    assert isinstance(kernel, UserspaceKernel)
    assert "backend auto: userspace WireGuard, because the kernel has no wireguard" in caplog.text


@pytest.mark.userspace
async def test_kernel_without_wireguard_is_unavailable_with_the_reason() -> None:
    await skip_unless_backend("userspace")
    if await kernel_wireguard_unavailable() is None:
        pytest.skip("this kernel has WireGuard")
    with pytest.raises(BackendUnavailable, match="kernel WireGuard is not available: the kernel"):
        await open_kernel("kernel")


@pytest.mark.userspace
async def test_neither_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    await skip_unless_backend("userspace")
    if await kernel_wireguard_unavailable() is None:
        pytest.skip("this kernel has WireGuard")
    monkeypatch.setenv(IMPLEMENTATION_ENV, "no-such-wireguard-go")
    with pytest.raises(BackendUnavailable, match="no-such-wireguard-go is not installed"):
        await open_kernel("auto")

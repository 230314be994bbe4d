"""The only code that touches the kernel: a port and its adapters."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shlex
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from wgkube.domain.errors import BackendUnavailable, IPv6Disabled, KernelError, NotPermitted
from wgkube.domain.net import IPInterface, IPNetwork
from wgkube.kernel.port import MAIN_TABLE, ROUTE_PROTOCOL, Kernel

log = logging.getLogger(__name__)

Backend = Literal["auto", "kernel", "userspace", "memory"]

MEMORY_STATE_ENV = "WGKUBE_MEMORY_STATE"
"""With backend `memory`, a JSON file that holds the device (tests and demos)."""
MEMORY_JOURNAL_ENV = "WGKUBE_MEMORY_JOURNAL"
"""With backend `memory`, a file each applied operation is appended to as a JSON line."""


async def open_kernel(
    backend: Backend,
    *,
    route_protocol: int = ROUTE_PROTOCOL,
    route_table: int = MAIN_TABLE,
    netns: str | None = None,
) -> Kernel:
    """The adapter for `backend`; `auto` takes kernel WireGuard when a link can be made.

    `netns` names a network namespace (`ip netns`) to work in instead of our own.
    """
    if backend == "memory":
        from wgkube.kernel.memory import MemoryKernel

        state = os.environ.get(MEMORY_STATE_ENV)
        journal = os.environ.get(MEMORY_JOURNAL_ENV)
        return MemoryKernel(Path(state) if state else None, Path(journal) if journal else None)
    if backend not in ("kernel", "userspace", "auto"):
        raise BackendUnavailable(f"unknown WireGuard backend {backend!r}")
    if not has_net_admin():
        # Said first: otherwise the probe falls through to wireguard-go, whose banner
        # ends in "operation not permitted" without saying why.
        raise NotPermitted("this process lacks CAP_NET_ADMIN (it is not root)")
    if backend in ("kernel", "auto"):
        why_not_kernel = await kernel_wireguard_unavailable(netns)
        if why_not_kernel is None:
            from wgkube.kernel.netlink import NetlinkKernel

            if backend == "auto":
                log.info("backend auto: kernel WireGuard (a probe wireguard link was created)")
            return NetlinkKernel(
                netns=netns, route_protocol=route_protocol, route_table=route_table
            )
        if backend == "kernel":
            raise BackendUnavailable(f"kernel WireGuard is not available: {why_not_kernel}")
    why_not_userspace = userspace_unavailable()
    if why_not_userspace is None:
        from wgkube.kernel.userspace import UserspaceKernel

        if backend == "auto":
            log.info("backend auto: userspace WireGuard, because %s", why_not_kernel)
        return UserspaceKernel(netns=netns, route_protocol=route_protocol, route_table=route_table)
    if backend == "userspace":
        raise BackendUnavailable(f"userspace WireGuard is not available: {why_not_userspace}")
    raise BackendUnavailable(
        f"no WireGuard backend: kernel ({why_not_kernel}); userspace ({why_not_userspace})"
    )


async def kernel_wireguard_unavailable(netns: str | None = None) -> str | None:
    """None when a wireguard link can really be created here, else why not.

    Checking for the module is not enough (it may be built in, or loadable on demand,
    or present but forbidden to us); creating and deleting a throw-away link answers
    exactly the question asked.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    from wgkube.kernel.rtnl import Rtnl

    rtnl = Rtnl(netns)
    probe = f"wgkprobe{secrets.token_hex(3)}"
    try:
        await rtnl.create_link(probe, "wireguard")
    except KernelError as exc:
        cause = exc.__cause__
        if isinstance(cause, NetlinkError) and cause.code == errno.EOPNOTSUPP:
            return "the kernel has no wireguard link type (module not loaded or not built)"
        if isinstance(cause, NetlinkError) and cause.code == errno.EPERM:
            return "no permission to create links (CAP_NET_ADMIN is needed)"
        return f"a probe wireguard link could not be created: {exc}"
    else:
        await rtnl.delete_link(probe)
        return None
    finally:
        rtnl.close()


CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """Whether our effective capabilities hold CAP_NET_ADMIN (Linux, /proc/self/status)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return os.geteuid() == 0


def check_ipv6(addresses: Iterable[IPInterface | IPNetwork]) -> None:
    """Raise IPv6Disabled when an IPv6 address is asked for and IPv6 is off here.

    The kernel would answer only "Permission denied" when the address is added.
    """
    v6 = [str(a) for a in addresses if a.version == 6]
    if not v6:
        return
    conf = Path("/proc/sys/net/ipv6/conf")
    if not conf.exists():
        raise IPv6Disabled(
            f"IPv6 is off on this host (booted with ipv6.disable=1); asked for {v6[0]}"
        )
    for scope in ("all", "default"):
        with contextlib.suppress(OSError):
            if (conf / scope / "disable_ipv6").read_text().strip() == "1":
                raise IPv6Disabled(
                    f"IPv6 is disabled here (net.ipv6.conf.{scope}.disable_ipv6 = 1) "
                    f"but the address {v6[0]} is IPv6"
                )


def userspace_unavailable() -> str | None:
    """None when a userspace implementation can be started here, else why not."""
    from wgkube.kernel.userspace import IMPLEMENTATION_ENV

    command = shlex.split(os.environ.get(IMPLEMENTATION_ENV) or "wireguard-go")
    if not command or shutil.which(command[0]) is None:
        return f"{command[0] if command else '(empty)'} is not installed (${IMPLEMENTATION_ENV})"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist"
    return None


__all__ = [
    "MAIN_TABLE",
    "MEMORY_JOURNAL_ENV",
    "MEMORY_STATE_ENV",
    "ROUTE_PROTOCOL",
    "Backend",
    "Kernel",
    "check_ipv6",
    "has_net_admin",
    "kernel_wireguard_unavailable",
    "open_kernel",
    "userspace_unavailable",
]

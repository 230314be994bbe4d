"""Throw-away network namespaces and veth pairs for tests and the demo (needs root).

Every namespace made here carries a unique name and is deleted on exit, links and all;
`ip` does the work, so what a test builds can be inspected by hand with `ip -n NAME`.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def can_make_namespaces() -> str | None:
    """None when namespaces can be made here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    return None


@dataclass(frozen=True, slots=True)
class NetNS:
    """A named network namespace (`ip netns`)."""

    name: str

    def argv(self, *argv: str) -> list[str]:
        """`argv` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace; on failure the error shows its stderr."""
        proc = subprocess.run(self.argv(*argv), capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} in netns {self.name} failed ({proc.returncode}): "
                f"{proc.stderr.strip()}"
            )
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip -n NAME args...`."""
        return _ip("-n", self.name, *args, check=check)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def create_netns(prefix: str = "wgk") -> NetNS:
    """A new namespace with a unique name and its loopback up."""
    ns = NetNS(f"{prefix}-{secrets.token_hex(4)}")
    _ip("netns", "add", ns.name)
    ns.ip("link", "set", "lo", "up")
    return ns


def delete_netns(ns: NetNS) -> None:
    """Delete the namespace; its links (veth ends, WireGuard devices) go with it."""
    _ip("netns", "del", ns.name, check=False)


@contextmanager
def netns(prefix: str = "wgk") -> Iterator[NetNS]:
    ns = create_netns(prefix)
    try:
        yield ns
    finally:
        delete_netns(ns)


def add_veth(a: NetNS, a_if: str, a_addr: str, b: NetNS, b_if: str, b_addr: str) -> None:
    """Join two namespaces with a veth pair, address both ends (CIDR) and bring them up."""
    _ip("link", "add", a_if, "netns", a.name, "type", "veth", "peer", b_if, "netns", b.name)
    for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        ns.ip("address", "add", addr, "dev", ifname)
        ns.ip("link", "set", ifname, "up")


@dataclass(frozen=True, slots=True)
class PingResult:
    transmitted: int
    received: int
    output: str

    @property
    def lost(self) -> int:
        return self.transmitted - self.received


_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def parse_ping(output: str) -> PingResult:
    """Counts from ping's summary line (iputils and busybox both print it)."""
    match = _SUMMARY.search(output)
    if match is None:
        raise ValueError(f"no ping summary in output: {output[-500:]!r}")
    return PingResult(int(match[1]), int(match[2]), output)


def ping_argv(
    ns: NetNS, target: str, *, count: int, interval: float = 0.2, deadline: int | None = None
) -> list[str]:
    args = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval)]
    if deadline is not None:
        args += ["-w", str(deadline)]
    return ns.argv(*args, target)


def ping(ns: NetNS, target: str, *, count: int = 3, interval: float = 0.2) -> PingResult:
    """Ping from inside `ns`, with a deadline so that a dead path cannot hang the caller."""
    deadline = int(count * interval) + 5
    argv = ping_argv(ns, target, count=count, interval=interval, deadline=deadline)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return parse_ping(proc.stdout + proc.stderr)


async def start_ping(
    ns: NetNS, target: str, *, count: int, interval: float
) -> asyncio.subprocess.Process:
    """A ping running in the background; finish it with `finish_ping`."""
    return await asyncio.create_subprocess_exec(
        *ping_argv(ns, target, count=count, interval=interval),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def finish_ping(proc: asyncio.subprocess.Process, *, stop: bool = True) -> PingResult:
    """Stop the ping (SIGINT makes it print its summary) and read the counts."""
    if stop and proc.returncode is None:
        proc.send_signal(2)
    out, _ = await proc.communicate()
    return parse_ping(out.decode(errors="replace"))

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
import signal
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


_REPLY = re.compile(r"icmp_seq=(\d+) ")
REPLY_TIMEOUT = 30.0


class PingStream:
    """A ping whose replies are read as they arrive.

    Stopping ping with a signal counts its last packet, still in flight, as lost; so
    instead of the summary's loss, judge by `missing`: requests with no reply up to the
    last one answered. Wait for replies after the period of interest, then stop.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.replies: set[int] = set()
        self._lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, ns: NetNS, target: str, *, interval: float) -> PingStream:
        proc = await asyncio.create_subprocess_exec(
            *ns.argv("ping", "-n", "-i", str(interval), target),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        while line := (await self._proc.stdout.readline()).decode(errors="replace"):
            self._lines.append(line)
            if match := _REPLY.search(line):
                async with self._changed:
                    self.replies.add(int(match[1]))
                    self._changed.notify_all()

    async def wait_for_replies(self, count: int) -> None:
        """Until `count` replies in all have arrived (at most REPLY_TIMEOUT seconds)."""
        async with asyncio.timeout(REPLY_TIMEOUT), self._changed:
            await self._changed.wait_for(lambda: len(self.replies) >= count)

    async def stop(self) -> PingResult:
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGINT)
        await self._proc.wait()
        await self._reader
        return parse_ping("".join(self._lines))

    @property
    def missing(self) -> set[int]:
        """Requests that got no reply, up to the last one that did."""
        last = max(self.replies, default=0)
        return set(range(1, last + 1)) - self.replies


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
    """Read the counts of a ping from `start_ping`; with `stop`, end it first (SIGINT
    makes ping print its summary, but counts the packet still in flight as lost)."""
    if stop and proc.returncode is None:
        proc.send_signal(signal.SIGINT)
    out, _ = await proc.communicate()
    return parse_ping(out.decode(errors="replace"))

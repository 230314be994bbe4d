"""The userspace adapter: WireGuard by wireguard-go, configured over its UAPI socket.

Protocol: https://www.wireguard.com/xplatform/ — `get=1` / `set=1`, hex keys, a blank
line ends a request, the reply ends with `errno=N`. Addresses, MTU, up and routes of
the TUN device are ordinary rtnetlink work (wgkube.kernel.rtnl).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shlex
import tempfile
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wgkube.diff.model import ConfigureDevice, ObservedPeer, RemovePeer, UpsertPeer
from wgkube.domain.errors import (
    DeviceNotFound,
    InterfaceTaken,
    InvalidInput,
    KernelError,
    OperationRejected,
    PortInUse,
)
from wgkube.domain.keys import PresharedKey, PrivateKey, PublicKey
from wgkube.domain.net import Endpoint, IPNetwork, shared_network
from wgkube.kernel.base import RtnlBackedKernel, WgDevice, WgOperation
from wgkube.kernel.port import MAIN_TABLE, ROUTE_PROTOCOL

log = logging.getLogger(__name__)

IMPLEMENTATION_ENV = "WG_USERSPACE_IMPLEMENTATION"
"""The command that runs a userspace WireGuard (default `wireguard-go`); wg-quick's name."""

SOCKET_DIR = Path("/var/run/wireguard")
START_TIMEOUT = 10.0
"""Seconds to wait for the UAPI socket of a freshly started implementation."""
UAPI_TIMEOUT = 30.0
"""Seconds one UAPI request may take (5000 peers take about half a second)."""
_ZERO_HEX = "0" * 64
_REJECTED_ERRNOS = frozenset({errno.EINVAL, errno.EADDRINUSE})
"""wireguard-go's answers about the values of a request (a key, an endpoint, an allowed
IP it cannot take; a listen port in use), not about the device: ipc.IpcErrorInvalid and
IpcErrorPortInUse. EIO, EPROTO and the rest mean the device or our encoding is broken."""


class UserspaceKernel(RtnlBackedKernel):
    """The Kernel port over wireguard-go (or any implementation speaking the UAPI)."""

    name = "userspace"

    def __init__(
        self,
        *,
        netns: str | None = None,
        route_protocol: int = ROUTE_PROTOCOL,
        route_table: int = MAIN_TABLE,
        socket_dir: Path = SOCKET_DIR,
        implementation: str | None = None,
    ) -> None:
        super().__init__(netns=netns, route_protocol=route_protocol, route_table=route_table)
        self.socket_dir = socket_dir
        self.implementation = shlex.split(
            implementation or os.environ.get(IMPLEMENTATION_ENV) or "wireguard-go"
        )

    def socket_path(self, ifname: str) -> Path:
        # `ip netns exec` leaves /var/run shared, so the path is the same in any namespace.
        return self.socket_dir / f"{ifname}.sock"

    # -- link lifecycle ------------------------------------------------------------------
    async def _create_link(self, ifname: str) -> None:
        if (link := await self.rtnl.link(ifname)) is not None:
            if self.socket_path(ifname).exists():
                return  # adopt a running implementation
            raise InterfaceTaken(
                f"interface {ifname} exists and is not a wireguard-go device "
                f"({link.kind or 'a tun or other link'}, no UAPI socket at "
                f"{self.socket_path(ifname)})"
            )
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv = [*prefix, *self.implementation, ifname]
        # The implementation daemonizes: the first process exits once the TUN device and
        # the UAPI socket exist. Its stderr goes to a file, not a pipe, because a daemon
        # started with LOG_LEVEL keeps the inherited descriptors open forever.
        with tempfile.TemporaryFile() as errors:
            try:
                # A session of its own: the device must outlive us (a stop, a crash, a
                # signal to our process group) so that a restart adopts it unchanged.
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=errors,
                    stderr=errors,
                    start_new_session=True,
                )
            except OSError as exc:
                raise KernelError(f"cannot start {shlex.join(argv)}: {exc}") from exc
            code = await proc.wait()
            if code != 0:
                errors.seek(0)
                text = errors.read().decode(errors="replace").strip()
                raise KernelError(f"{shlex.join(argv)} exited with {code}: {text[-2000:]}")
        await self._wait_for_socket(ifname)
        log.info("started %s for %s", self.implementation[0], ifname)

    async def _wait_for_socket(self, ifname: str) -> None:
        # Wait for an answer, not just for the socket file: the daemon's child sets the
        # TUN device's MTU back to its default as it starts, and only then serves UAPI.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                await self._uapi(ifname, ["get=1"])
                return
            except DeviceNotFound:
                if time.monotonic() > deadline:
                    path = self.socket_path(ifname)
                    raise KernelError(f"no UAPI socket at {path} after {START_TIMEOUT}s") from None
                await asyncio.sleep(0.02)

    async def delete(self, ifname: str) -> None:
        path = self.socket_path(ifname)
        await super().delete(ifname)
        # wireguard-go exits when its TUN device goes away and unlinks the socket as it
        # goes. Wait for that: a new instance started for the same name meanwhile would
        # otherwise lose its fresh socket to the old one's clean-up.
        deadline = time.monotonic() + START_TIMEOUT
        while path.exists() and time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_unix_connection(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                break
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # -- UAPI ------------------------------------------------------------------------------
    async def _uapi(self, ifname: str, lines: Sequence[str]) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        async with contextlib.aclosing(self._uapi_blocks(ifname, lines)) as blocks:
            async for block in blocks:
                pairs.extend(block)
        return pairs

    async def _uapi_blocks(
        self, ifname: str, lines: Sequence[str]
    ) -> AsyncGenerator[list[tuple[str, str]], None]:
        """One UAPI request; its reply's key=value pairs as they arrive, a block per read
        of the socket, up to its closing `errno=N` line (a non-zero errno is raised as
        what it means). The reply is never held whole: 10,000 peers are ~3.4 MB of it."""
        path = self.socket_path(ifname)
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DeviceNotFound(f"interface {ifname}: no UAPI socket at {path}") from exc
        except OSError as exc:
            raise KernelError(f"interface {ifname}: cannot connect to {path}: {exc}") from exc
        reply = _Reply(ifname, lines)
        # A deadline for the whole request, entered around each wait only: a timeout
        # scope must not span a yield (it would cancel the reader's own work).
        deadline = asyncio.get_running_loop().time() + UAPI_TIMEOUT
        try:
            async with asyncio.timeout_at(deadline):
                writer.write(("\n".join(lines) + "\n\n").encode())
                await writer.drain()
            while not reply.complete:
                async with asyncio.timeout_at(deadline):
                    chunk = await reader.read(UAPI_CHUNK)
                if not chunk:
                    raise KernelError(f"interface {ifname}: UAPI closed without errno")
                yield reply.feed(chunk)
        except (OSError, TimeoutError) as exc:
            raise KernelError(f"interface {ifname}: UAPI request failed: {exc!r}") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _wg_read(self, ifname: str) -> WgDevice:
        # 10,000 peers are ~60,000 lines, parsed as they arrive, a socket read at a time
        # (~200 peers, a few ms), the event loop (a Node change, a probe) getting a turn
        # after each, instead of waiting ~0.3 s for all of them.
        parser = _GetParser()
        try:
            async with contextlib.aclosing(self._uapi_blocks(ifname, ["get=1"])) as blocks:
                async for block in blocks:
                    parser.feed(block)
                    await asyncio.sleep(0)
        except (ValueError, InvalidInput) as exc:
            raise KernelError(f"interface {ifname}: cannot parse UAPI reply: {exc}") from exc
        return parser.device()

    async def _wg_write(self, ifname: str, ops: Sequence[WgOperation]) -> None:
        # One `set=1` transaction per run; device keys must precede the first peer, so a
        # ConfigureDevice after a peer starts a new transaction.
        batch: list[str] = []
        count = 0
        in_peers = False
        for op in ops:
            if isinstance(op, ConfigureDevice) and in_peers:
                await self._set(ifname, batch, count)
                batch, count, in_peers = [], 0, False
            batch.extend(_set_lines(op))
            count += 1
            in_peers = in_peers or not isinstance(op, ConfigureDevice)
        if batch:
            await self._set(ifname, batch, count)

    async def _set(self, ifname: str, lines: list[str], count: int) -> None:
        await self._uapi(ifname, ["set=1", *lines])
        self.writes += count


def _refusal(ifname: str, request: str, value: str) -> KernelError:
    """wireguard-go answers `errno=-N`; a refused value becomes OperationRejected."""
    code = -int(value) if value.lstrip("-").isdigit() else 0
    answer = f"errno={value} ({os.strerror(code)})" if code > 0 else f"errno={value}"
    message = f"interface {ifname}: {request} failed with {answer}"
    if code in _REJECTED_ERRNOS:
        return OperationRejected(message, answer=answer)
    return KernelError(message)


def _set_lines(op: WgOperation) -> list[str]:
    match op:
        case ConfigureDevice(private_key, listen_port, fwmark):
            lines = []
            if private_key is not None:
                lines.append(f"private_key={private_key.raw.hex()}")
            if listen_port is not None:
                lines.append(f"listen_port={listen_port}")
            if fwmark is not None:
                lines.append(f"fwmark={fwmark}")
            return lines
        case RemovePeer(key):
            return [f"public_key={key.raw.hex()}", "remove=true"]
        case UpsertPeer(key, endpoint, allowed, keepalive, psk, _new):
            lines = [f"public_key={key.raw.hex()}"]
            if psk is not None:
                lines.append(f"preshared_key={psk.raw.hex()}")
            if endpoint is not None:
                lines.append(f"endpoint={endpoint}")
            if keepalive is not None:
                lines.append(f"persistent_keepalive_interval={keepalive}")
            if allowed is not None:
                lines.append("replace_allowed_ips=true")
                lines.extend(f"allowed_ip={net}" for net in allowed)
            return lines
    raise AssertionError(op)  # pragma: no cover


@dataclass
class _PeerReply:
    """One peer's lines of a `get=1` reply, gathered before they become an ObservedPeer."""

    key: PublicKey
    allowed: set[IPNetwork] = field(default_factory=set)
    values: dict[str, str] = field(default_factory=dict)

    def observed(self) -> ObservedPeer:
        v = self.values
        psk_hex = v.get("preshared_key", _ZERO_HEX)
        endpoint = v.get("endpoint", "")
        return ObservedPeer(
            public_key=self.key,
            endpoint=Endpoint.parse(endpoint) if endpoint else None,
            allowed_ips=frozenset(self.allowed),
            persistent_keepalive=int(v.get("persistent_keepalive_interval", "0")),
            preshared_key=None if psk_hex == _ZERO_HEX else PresharedKey(bytes.fromhex(psk_hex)),
            last_handshake=int(v.get("last_handshake_time_sec", "0"))
            + int(v.get("last_handshake_time_nsec", "0")) / 1e9,
            rx_bytes=int(v.get("rx_bytes", "0")),
            tx_bytes=int(v.get("tx_bytes", "0")),
        )


UAPI_CHUNK = 1 << 16


class _Reply:
    """A UAPI reply fed as it arrives: its key=value pairs, up to the `errno=N` line and
    the blank line after it (`complete`). A non-zero errno is raised as what it means
    (a taken listen port, a refused value)."""

    def __init__(self, ifname: str, request: Sequence[str]) -> None:
        self.ifname = ifname
        self.request = request
        self.complete = False
        self._errno: str | None = None
        self._partial = b""

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        pairs: list[tuple[str, str]] = []
        for line in lines:
            if self._errno is not None:  # only the blank line may follow errno
                self.complete = self.complete or not line
                continue
            key, _, value = line.decode().partition("=")
            if key == "errno":
                self._errno = value
                self._check(value)
            elif key:
                pairs.append((key, value))
        return pairs

    def _check(self, value: str) -> None:
        if value.lstrip("-") == str(errno.EADDRINUSE):
            # wireguard-go answers a taken listen_port with -EADDRINUSE.
            port = next(
                (
                    int(v)
                    for k, _, v in (ln.partition("=") for ln in self.request)
                    if k == "listen_port"
                ),
                0,
            )
            raise PortInUse(port)
        if value != "0":
            raise _refusal(self.ifname, self.request[0], value)


def _reply_pairs(ifname: str, lines: Sequence[str], raw: bytes) -> list[tuple[str, str]]:
    """The pairs of a whole reply (the tests' way in)."""
    reply = _Reply(ifname, lines)
    pairs = reply.feed(raw)
    if not reply.complete:
        raise KernelError(f"interface {ifname}: UAPI reply without errno")
    return pairs


def _parse_reply(ifname: str, raw: bytes) -> WgDevice:
    """The device of a whole `get=1` reply (the tests' way in)."""
    parser = _GetParser()
    try:
        parser.feed(_reply_pairs(ifname, ["get=1"], raw))
    except (ValueError, InvalidInput) as exc:
        raise KernelError(f"interface {ifname}: cannot parse UAPI reply: {exc}") from exc
    return parser.device()


@dataclass
class _GetParser:
    """A `get=1` reply's device and peers, fed pairs as they arrive; each peer becomes an
    ObservedPeer as soon as its lines end (the next public_key), not after the reply."""

    private_key: PrivateKey | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: dict[PublicKey, ObservedPeer] = field(default_factory=dict)
    current: _PeerReply | None = None

    def feed(self, pairs: Iterable[tuple[str, str]]) -> None:
        for key, value in pairs:
            current = self.current
            if key == "public_key":
                if current is not None:
                    self.peers[current.key] = current.observed()
                self.current = _PeerReply(PublicKey(bytes.fromhex(value)))
            elif current is not None and key == "allowed_ip":
                current.allowed.add(shared_network(value))
            elif current is not None:
                current.values[key] = value
            elif key == "private_key" and value != _ZERO_HEX:
                # The kernel reports the clamped key; report the same here.
                self.private_key = PrivateKey(bytes.fromhex(value)).clamped()
            elif key == "listen_port":
                self.listen_port = int(value)
            elif key == "fwmark":
                self.fwmark = int(value)

    def device(self) -> WgDevice:
        if self.current is not None:
            self.peers[self.current.key] = self.current.observed()
            self.current = None
        return WgDevice(
            private_key=self.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            peers=self.peers,
        )

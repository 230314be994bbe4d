"""An emulated kube-apiserver for tests and the demo, served over real HTTP on 127.0.0.1.

Use it in a background thread (its own event loop)::

    with EmulatedApiServer() as api:
        api.create_node("hub", labels={"wireguard.kube/peer": "true"})
        subprocess.run(["kubectl", "get", "nodes"], env={"KUBECONFIG": str(api.kubeconfig)})

or inside a running loop (then use the in-loop ``api.emulator.*_object`` methods, because
the synchronous HTTP helpers would block the very loop that serves them)::

    async with EmulatedApiServer() as api:
        api.emulator.create_object("nodes", {"metadata": {"name": "hub"}})

or as a process: ``python -m wgkube.testing.apiserver --port 6443 --kubeconfig kube.yaml``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import errno
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import aiohttp.web

from wgkube.testing._client import (
    ApiError,
    ApiServer,
    EmulatorControls,
    HttpHelpers,
    KubeHttpClient,
    node_body,
    wait_for,
)
from wgkube.testing._emulator import ApiStatusError, Fault, KubeApiEmulator, RequestRecord
from wgkube.testing.kubeconfig import write_kubeconfig

__all__ = [
    "ApiError",
    "ApiServer",
    "ApiStatusError",
    "EmulatedApiServer",
    "EmulatorControls",
    "Fault",
    "KubeApiEmulator",
    "KubeHttpClient",
    "RealApiServer",
    "RequestRecord",
    "main",
    "node_body",
    "wait_for",
]

T = TypeVar("T")

_DEFAULT_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Gone",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class EmulatedApiServer(HttpHelpers):
    """The emulator on a free port, with an admin kubeconfig, helpers and controls."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history_size: int = 1000,
        bookmark_interval: float = 5.0,
        admin_user: str = "admin",
        admin_token: str | None = None,
        kubeconfig_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._admin_user = admin_user
        self._admin_token = admin_token or secrets.token_hex(16)
        self.emulator = KubeApiEmulator(
            history_size=history_size,
            bookmark_interval=bookmark_interval,
            tokens={self._admin_token: admin_user},
        )
        self._host = host
        self._port = port
        self._kubeconfig_path = Path(kubeconfig_path) if kubeconfig_path else None
        self._tmpdir: Path | None = None
        self._user_tokens: dict[str, str] = {}
        self._url: str | None = None
        self._kubeconfig: Path | None = None
        self._client: KubeHttpClient | None = None
        self._runner: aiohttp.web.ServerRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._errors: list[Exception] = []

    # ------------------------------------------------------------------ ApiServer

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the emulated API server is not running")
        return self._url

    @property
    def kubeconfig(self) -> Path:
        if self._kubeconfig is None:
            raise RuntimeError("the emulated API server is not running")
        return self._kubeconfig

    @property
    def controls(self) -> EmulatorControls:
        return self

    @property
    def client(self) -> KubeHttpClient:
        if self._loop_thread_id == threading.get_ident():
            raise RuntimeError(
                "the synchronous HTTP helpers would block the loop serving the emulator; "
                "in `async with EmulatedApiServer()`, use api.emulator.*_object() instead"
            )
        if self._client is None:
            self._client = KubeHttpClient(self.kubeconfig)
        return self._client

    def write_kubeconfig(
        self, path: str | os.PathLike[str], *, user: str = "admin", token: str | None = None
    ) -> Path:
        """A kubeconfig for ``user``; a token is minted (and known to the emulator) if not given."""
        if token is None:
            if user == self._admin_user:
                token = self._admin_token
            else:
                token = self._user_tokens.setdefault(user, secrets.token_hex(16))
        self.add_token(token, user)
        return write_kubeconfig(path, self.url, user=user, token=token)

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig authenticating as ``user`` (as ControlPlane.kubeconfig_for does)."""
        if self._tmpdir is None:
            raise RuntimeError("the emulated API server is not running")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        return self.write_kubeconfig(self._tmpdir / f"{safe}.kubeconfig", user=user)

    # ------------------------------------------------------------------ EmulatorControls

    def call_in_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the emulator's loop (directly if already there, or before start).

        For in-process writes that bypass HTTP but not the watches, e.g. while unavailable:
        ``api.call_in_loop(lambda: api.emulator.patch_object("nodes", "hub", {...}))``.
        """
        loop = self._loop
        if loop is None or self._loop_thread_id == threading.get_ident():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log (every request, in arrival order)."""
        return self.call_in_loop(lambda: list(self.emulator.request_log))

    def clear_requests(self) -> None:
        self.call_in_loop(self.emulator.request_log.clear)

    @contextlib.contextmanager
    def unavailable(self) -> Iterator[None]:
        """Answer 503 to everything (and drop open watches) inside the block."""
        self.set_unavailable(True)
        try:
            yield
        finally:
            self.set_unavailable(False)

    def set_unavailable(self, value: bool) -> None:
        self.call_in_loop(lambda: self.emulator.set_unavailable(value))

    def drop_watches(self) -> int:
        return self.call_in_loop(self.emulator.drop_watches)

    @property
    def open_watches(self) -> int:
        return self.call_in_loop(lambda: self.emulator.open_watches)

    def fail_next(
        self,
        code: int = 500,
        *,
        verb: str | None = None,
        resource: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
        times: int = 1,
        reason: str | None = None,
        message: str = "injected fault",
    ) -> None:
        """Answer the next ``times`` matching requests with ``code``, before any effect."""
        fault = Fault(
            code=code,
            reason=reason or _DEFAULT_REASONS.get(code, "InternalError"),
            message=message,
            verb=verb,
            resource=resource,
            subresource=subresource,
            name=name,
            namespace=namespace,
            times=times,
        )
        self.call_in_loop(lambda: self.emulator.inject_fault(fault))

    def compact(self) -> int:
        """Forget the change history: watches from older resourceVersions get 410 Gone."""
        return self.call_in_loop(self.emulator.compact)

    @property
    def resource_version(self) -> int:
        return self.call_in_loop(lambda: self.emulator.resource_version)

    def add_token(self, token: str, user: str) -> None:
        def add() -> None:
            self.emulator.tokens[token] = user

        self.call_in_loop(add)

    @property
    def internal_errors(self) -> list[Exception]:
        """Unexpected exceptions inside the emulator (bugs, not API errors)."""
        return self.call_in_loop(lambda: list(self._errors))

    # ------------------------------------------------------------------ lifecycle (in a loop)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        await self.emulator.__aenter__()
        self._errors = self.emulator.errors  # the same list, filled as errors happen
        server = aiohttp.web.Server(self.emulator, handler_cancellation=True, access_log=None)
        self._runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2.0)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        address = self._runner.addresses[0]
        host, port = str(address[0]), int(address[1])
        self._url = f"http://{host}:{port}"
        self.emulator.server_address = f"{host}:{port}"
        self._tmpdir = Path(tempfile.mkdtemp(prefix="wgkube-apiserver-"))
        self._kubeconfig = write_kubeconfig(
            self._kubeconfig_path or self._tmpdir / "admin.kubeconfig",
            self._url,
            user=self._admin_user,
            token=self._admin_token,
        )

    async def stop(self) -> None:
        self.emulator.drop_watches()  # open watches would delay the shutdown for minutes
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.emulator.active:
            await self.emulator.__aexit__(None, None, None)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self._loop = None
        self._loop_thread_id = None

    async def __aenter__(self) -> EmulatedApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # ------------------------------------------------------------------ lifecycle (a thread)

    def __enter__(self) -> EmulatedApiServer:
        ready = threading.Event()

        async def serve() -> None:
            stop = asyncio.Event()
            self._stop_event = stop
            try:
                await self.start()
            except BaseException as exc:
                self._startup_error = exc
                ready.set()
                await self.stop()
                return
            ready.set()
            try:
                await stop.wait()
            finally:
                await self.stop()

        self._thread = threading.Thread(
            target=lambda: asyncio.run(serve()), name="wgkube-apiserver", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=60):
            raise RuntimeError("the emulated API server did not start within 60 s")
        if self._startup_error is not None:
            raise RuntimeError("the emulated API server failed to start") from self._startup_error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        loop, stop, thread = self._loop, self._stop_event, self._thread
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout=60)
            if thread.is_alive():
                raise RuntimeError("the emulated API server did not stop within 60 s")
        self._thread = None


class RealApiServer(HttpHelpers):
    """The same helpers against a real control plane described by an admin kubeconfig.

    ``kubeconfig_for`` (e.g. ``ControlPlane.kubeconfig_for``) mints per-user kubeconfigs.
    """

    def __init__(
        self,
        kubeconfig: str | os.PathLike[str],
        *,
        kubeconfig_for: Callable[[str], Path] | None = None,
    ) -> None:
        self._kubeconfig = Path(kubeconfig)
        self._client = KubeHttpClient(self._kubeconfig)
        self._kubeconfig_for = kubeconfig_for

    def kubeconfig_for(self, user: str) -> Path:
        if self._kubeconfig_for is None:
            raise NotImplementedError("this control plane cannot mint kubeconfigs for users")
        return self._kubeconfig_for(user)

    @property
    def url(self) -> str:
        return self._client.info.server

    @property
    def kubeconfig(self) -> Path:
        return self._kubeconfig

    @property
    def controls(self) -> None:
        return None

    @property
    def client(self) -> KubeHttpClient:
        return self._client

    def write_kubeconfig(
        self, path: str | os.PathLike[str], *, user: str = "admin", token: str | None = None
    ) -> Path:
        """A copy of the admin kubeconfig, or (given a token) one that uses that token."""
        if token is None:
            target = Path(path)
            shutil.copyfile(self._kubeconfig, target)
            return target
        return write_kubeconfig(path, self.url, user=user, token=token)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wgkube.testing.apiserver",
        description="Serve an emulated kube-apiserver until SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", required=True, help="where to write an admin kubeconfig")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--token", default=None, help="the admin bearer token (default: random)")
    parser.add_argument("--history-size", type=int, default=1000)
    parser.add_argument("--bookmark-interval", type=float, default=5.0)
    args = parser.parse_args(argv)

    server = EmulatedApiServer(
        host=args.host,
        port=args.port,
        history_size=args.history_size,
        bookmark_interval=args.bookmark_interval,
        admin_user=args.user,
        admin_token=args.token,
        kubeconfig_path=args.kubeconfig,
    )

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await server.start()
        except OSError as exc:
            # The kubeconfig is written only once the port is ours, so a caller waiting
            # for an answer never talks to whoever holds the port.
            await server.stop()
            reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            print(
                f"wgkube emulated apiserver: cannot listen on {args.host}:{args.port}: {reason}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        print(
            f"wgkube emulated apiserver serving at {server.url} (kubeconfig: {server.kubeconfig})",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await server.stop()
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())

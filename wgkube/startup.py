"""Start-up failures of `wg-kube hub` and `wg-kube spoke` as one line: the input, the fault,
the fix; and the first contact with the API server, which proves the kubeconfig works.

A user who mistypes a path or runs without root gets that line and exit status 1, never a
traceback. The fixes name the flag and the environment variable, read from the settings
model, so they cannot drift from `--help`.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from wgkube.config import field_meta
from wgkube.domain.errors import (
    BackendUnavailable,
    InterfaceTaken,
    IPv6Disabled,
    KeyFileError,
    KubeconfigError,
    NotPermitted,
    PortInUse,
    SetupError,
    WgKubeError,
)
from wgkube.kube.client import Api, KubeApiError

EXIT_SETUP = 1
"""Exit status for a start-up input that cannot be used (2 stays for a bad command line)."""

REACH_WITHIN = 5.0
"""Seconds the first API call may keep failing to connect before start-up gives up: a
blip is ridden out, a wrong address is reported (systemd and the kubelet restart us)."""

FIXES: tuple[tuple[type[BaseException], tuple[str, ...], str], ...] = (
    # (error, the settings fields that are the input, the fix); the first match wins.
    (KubeconfigError, ("kubeconfig",), ""),
    (KeyFileError, ("private_key_file", "key_dir"), "make it usable by wg-kube or choose another"),
    (PortInUse, ("listen_port",), "stop what holds it or choose another port"),
    (
        InterfaceTaken,
        ("interface",),
        "remove that link (`ip link del NAME`) or choose another name",
    ),
    (IPv6Disabled, ("address",), "enable IPv6 or give only IPv4 addresses"),
    (
        NotPermitted,
        (),
        "run as root or with CAP_NET_ADMIN (systemd AmbientCapabilities=, the pod's NET_ADMIN)",
    ),
    (
        BackendUnavailable,
        ("backend",),
        "install wireguard-go (Debian: apt install wireguard-go) or load the wireguard module",
    ),
)


def inputs(model: type[BaseModel], fields: tuple[str, ...]) -> str:
    """`--flag / ENV` for each field the model has, joined with commas."""
    meta = field_meta(model)
    named = []
    for name in fields:
        if name in meta:
            m = meta[name]
            named.append(f"{m['flag']} / {m['env']}" if m["env"] else m["flag"])
    return ", ".join(named)


def explain(error: BaseException, model: type[BaseModel]) -> str:
    """The one line for a failed start: what failed, then the fix and the inputs it names."""
    message = str(error) or type(error).__name__
    if isinstance(error, OSError) and not isinstance(error, WgKubeError):
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror or message}{where}"
    for kind, fields, fix in FIXES:
        if isinstance(error, kind):
            named = inputs(model, fields)
            tail = "; ".join(part for part in (fix, f"set by {named}" if named else "") if part)
            return f"{message} ({tail})" if tail else message
    return message


GC_THRESHOLDS = (50_000, 20, 10)
"""Python's defaults are (700, 10, 10): a young collection every 700 allocations. A full
collection every 10 of the middle ones, as by default: at 100 instead, a hub's peak at
10,000 peers against the real API server was 321 MB, at 10 271 MB, at the same speed."""


def tune_gc() -> None:
    """The cyclic collector for a long-running process whose state is large and acyclic.

    A hub holds ~10,000 peers' registry, desired state and cache, and decodes ~40 MB of
    Node lists at start-up: with the defaults the collector runs every 700 allocations
    and, while the heap grows, scans all of it again and again (decoding one page of 500
    Nodes took 2-4x as long beside a large heap as with the collector off). What exists
    once the imports are done (modules, classes, functions) is frozen out of every
    collection, and collections run less often; memory is still freed by reference
    counting as it was, only cycles wait longer.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_checked(prog: str, model: type[BaseModel], body: Callable[[], int]) -> int:
    """`body()`, with every expected failure turned into one line on stderr and status 1.

    Called once the command's imports are done, so it also tunes the collector first."""
    tune_gc()
    try:
        return body()
    except (WgKubeError, OSError) as exc:
        print(f"{prog}: {explain(exc, model)}", file=sys.stderr, flush=True)
        return EXIT_SETUP


async def check_api(api: Api, kubeconfig: Path | None, node_name: str) -> None:
    """One GET of our own Node, to learn at start whether the kubeconfig leads anywhere.

    Raises KubeconfigError (SetupError in-cluster) when the server cannot be reached
    (after REACH_WITHIN seconds of trying), its certificate is not trusted or it refuses
    the credentials. Any other answer (404 before the kubelet registers the Node, 403,
    503) shows a server that is there: the callers' own retries take it from here.
    """

    def unusable(problem: str) -> SetupError:
        if kubeconfig is None:
            return SetupError(f"the in-cluster service account {problem}")
        return KubeconfigError(str(kubeconfig), problem)

    deadline = time.monotonic() + REACH_WITHIN
    delay = 0.2
    while True:
        try:
            await api.get_node(node_name)
            return
        except KubeApiError as exc:
            if exc.status == 401:
                raise unusable(
                    f"is refused by the API server {api.host} ({exc}): "
                    "renew its token or client certificate",
                ) from exc
            if exc.status is not None:
                return
            if isinstance(exc.__cause__, ssl.SSLError):
                raise unusable(
                    f"does not trust the API server {api.host}: {exc}: "
                    "put the cluster's CA in certificate-authority-data",
                ) from exc
            if time.monotonic() + delay > deadline:
                raise unusable(
                    f"names the API server {api.host}, which cannot be reached ({exc}): "
                    "check its server: address and that the API server is running",
                ) from exc
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)

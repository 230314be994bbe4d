"""The only code that touches the kernel: a port and its adapters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from wgkube.kernel.port import MAIN_TABLE, ROUTE_PROTOCOL, Kernel

Backend = Literal["auto", "kernel", "userspace", "memory"]

MEMORY_STATE_ENV = "WGKUBE_MEMORY_STATE"
"""With backend `memory`, a JSON file that holds the device (tests and demos)."""


async def open_kernel(
    backend: Backend,
    *,
    route_protocol: int = ROUTE_PROTOCOL,
    route_table: int = MAIN_TABLE,
) -> Kernel:
    """The adapter for `backend`; `auto` takes kernel WireGuard when a link can be made."""
    if backend == "memory":
        from wgkube.kernel.memory import MemoryKernel

        state = os.environ.get(MEMORY_STATE_ENV)
        return MemoryKernel(Path(state) if state else None)
    raise NotImplementedError(backend)


__all__ = ["MAIN_TABLE", "MEMORY_STATE_ENV", "ROUTE_PROTOCOL", "Backend", "Kernel", "open_kernel"]

"""Test support shipped with the package: an emulated kube-apiserver (see ``apiserver``).

Names are imported lazily so that ``python -m wgkube.testing.apiserver`` runs cleanly
and importing ``wgkube.testing`` does not pull in kmock until it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wgkube.testing.apiserver import (
        ApiError,
        ApiServer,
        ApiStatusError,
        EmulatedApiServer,
        EmulatorControls,
        Fault,
        KubeApiEmulator,
        KubeHttpClient,
        RealApiServer,
        RequestRecord,
        node_body,
        wait_for,
    )
    from wgkube.testing.kubeconfig import load_kubeconfig, write_kubeconfig

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
    "load_kubeconfig",
    "node_body",
    "wait_for",
    "write_kubeconfig",
]

_KUBECONFIG_NAMES = {"load_kubeconfig", "write_kubeconfig"}


def __getattr__(name: str) -> Any:
    if name in _KUBECONFIG_NAMES:
        return getattr(importlib.import_module("wgkube.testing.kubeconfig"), name)
    if name in __all__:
        return getattr(importlib.import_module("wgkube.testing.apiserver"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Pytest plugin: the Kubernetes API for tests (``pytest_plugins = ["tests.support.api"]``).

Fixtures:

* ``api_server`` -> :class:`wgkube.testing.ApiServer`: ``.url``, ``.kubeconfig`` (admin),
  ``.write_kubeconfig(path, user=, token=)``, and HTTP helpers (``get``, ``list``, ``create``,
  ``patch``, ``delete``, ``create_node``, ``patch_node``, ``delete_node``, ``events``,
  ``wait_for``). By default a fresh emulator per test; with ``WGKUBE_TEST_KUBECONFIG`` set,
  the helpers run against that real cluster instead (and emulator-only tests are skipped).
* ``emulator`` -> :class:`wgkube.testing.EmulatorControls`: the request log and fault
  injection (``unavailable()``, ``drop_watches()``, ``fail_next()``, ``compact()``).
* ``kube_env`` -> an environment dict for subprocesses (``KUBECONFIG`` = the admin kubeconfig).

Helpers ``wait_for`` (sync) and ``async_wait_for`` poll a predicate until it is truthy.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from wgkube.testing.apiserver import (
    ApiServer,
    EmulatedApiServer,
    EmulatorControls,
    RealApiServer,
    wait_for,
)

__all__ = ["REAL_KUBECONFIG_ENV", "async_wait_for", "wait_for"]

REAL_KUBECONFIG_ENV = "WGKUBE_TEST_KUBECONFIG"


async def async_wait_for(
    predicate: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109  (a polling deadline, like wait_for's)
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll a sync or async predicate until truthy, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    yield from _emulated_or_configured()


def _emulated_or_configured() -> Iterator[ApiServer]:
    real = os.environ.get(REAL_KUBECONFIG_ENV)
    if real:
        yield RealApiServer(real)
        return
    with EmulatedApiServer() as api:
        yield api
        errors = api.internal_errors
    if errors:
        pytest.fail(f"the API emulator failed internally: {errors!r}")


BOTH = [
    pytest.param("emulator", id="emulator"),
    pytest.param("real", marks=pytest.mark.realapi, id="real"),
]
"""Parameters for an `api_server` override that runs a suite against both servers."""


def emulator_and_real(request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    """The body of a parametrised `api_server` (params=BOTH): the emulator, or the real
    kube-apiserver of tests/support/controlplane.py, emptied of Nodes and Events after
    each test since it is shared by the session."""
    if request.param == "emulator":
        yield from _emulated_or_configured()
        return
    plane = request.getfixturevalue("real_api_server")
    api = RealApiServer(plane.kubeconfig, kubeconfig_for=plane.kubeconfig_for)
    try:
        yield api
    finally:
        for node in api.list("nodes"):
            api.delete("nodes", node["metadata"]["name"])
        for event in api.list("events", namespace="default"):
            api.delete("events", event["metadata"]["name"], namespace="default")


@pytest.fixture
def emulator(api_server: ApiServer) -> EmulatorControls:
    controls = api_server.controls
    if controls is None:
        pytest.skip("needs the API emulator (request log / fault injection)")
    return controls


@pytest.fixture
def kube_env(api_server: ApiServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["KUBECONFIG"] = str(api_server.kubeconfig)
    return env

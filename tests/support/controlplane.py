"""`real_api_server`: a real etcd + kube-apiserver (session-scoped), or a skip.

The counterpart of the emulator's `api_server` fixture (tests/support/api.py):
both yield an object with `.url`, `.kubeconfig` (admin) and
`.kubeconfig_for(user) -> Path`. Register with
`pytest_plugins = ["tests.support.controlplane"]` in tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from wgkube.testing.controlplane import ControlPlane, missing_binaries

#: Spoke nodes that get static tokens; any other `system:node:<name>` gets a
#: client certificate from `kubeconfig_for` on demand.
NODES = ("spoke-a", "spoke-b", "spoke-c")


def require_control_plane() -> None:
    """Skip without the binaries, except in CI (CI=true), where tests of permissions,
    identities and admission must run: there a missing control plane fails them."""
    reason = missing_binaries()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and no real control plane: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_api_server() -> Iterator[ControlPlane]:
    require_control_plane()
    with ControlPlane(nodes=NODES) as control_plane:
        yield control_plane

"""`real_api_server`: a real etcd + kube-apiserver (session-scoped), or a skip.

The counterpart of the emulator's `api_server` fixture (tests/support/api.py):
both yield an object with `.url`, `.kubeconfig` (admin) and
`.kubeconfig_for(user) -> Path`. Register with
`pytest_plugins = ["tests.support.controlplane"]` in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wgkube.testing.controlplane import ControlPlane, missing_binaries

#: Spoke nodes that get static tokens; any other `system:node:<name>` gets a
#: client certificate from `kubeconfig_for` on demand.
NODES = ("spoke-a", "spoke-b", "spoke-c")


@pytest.fixture(scope="session")
def real_api_server() -> Iterator[ControlPlane]:
    reason = missing_binaries()
    if reason is not None:
        pytest.skip(reason)
    with ControlPlane(nodes=NODES) as control_plane:
        yield control_plane

"""The one start-up line, as a pure function of the error and the settings model."""

from __future__ import annotations

import errno

import pytest
from pydantic import BaseModel

from wgkube.domain.errors import (
    ApiError,
    InterfaceTaken,
    KeyFileError,
    KubeconfigError,
    NotPermitted,
    PortInUse,
)
from wgkube.operator.settings import HubSettings
from wgkube.spoke_agent.settings import SpokeSettings
from wgkube.startup import explain

CASES: list[tuple[BaseException, type[BaseModel], str]] = [
    (
        PortInUse(51820),
        HubSettings,
        "UDP port 51820 is already in use (stop what holds it or choose another port; "
        "set by --listen-port / WG_LISTEN_PORT)",
    ),
    (
        KeyFileError("cannot write private key file /k/wg0.key: denied"),
        HubSettings,
        "cannot write private key file /k/wg0.key: denied (make it usable by wg-kube or "
        "choose another; set by --private-key-file / WG_PRIVATE_KEY_FILE, --key-dir / WG_KEY_DIR)",
    ),
    (
        # The spoke has no --key-dir: only the inputs the command has are named.
        KeyFileError("cannot write private key file /k/wg0.key: denied"),
        SpokeSettings,
        "cannot write private key file /k/wg0.key: denied (make it usable by wg-kube or "
        "choose another; set by --private-key-file / WG_PRIVATE_KEY_FILE)",
    ),
    (
        KubeconfigError("/x", "does not exist: give the path of a kubeconfig"),
        SpokeSettings,
        "kubeconfig /x does not exist: give the path of a kubeconfig "
        "(set by --kubeconfig / KUBECONFIG)",
    ),
    (
        InterfaceTaken("interface wg0 exists and is a bridge, not wireguard"),
        SpokeSettings,
        "interface wg0 exists and is a bridge, not wireguard (remove that link "
        "(`ip link del NAME`) or choose another name; set by --interface / WG_INTERFACE)",
    ),
    (
        NotPermitted("this process lacks CAP_NET_ADMIN (it is not root)"),
        HubSettings,
        "this process lacks CAP_NET_ADMIN (it is not root) (run as root or with "
        "CAP_NET_ADMIN (systemd AmbientCapabilities=, the pod's NET_ADMIN))",
    ),
    (ApiError("API error 500: boom"), HubSettings, "API error 500: boom"),
    (
        PermissionError(errno.EACCES, "Permission denied", "/var/lib/wg-kube/memory.json"),
        HubSettings,
        "Permission denied: /var/lib/wg-kube/memory.json",
    ),
]


@pytest.mark.parametrize(("error", "model", "line"), CASES)
def test_each_start_up_error_becomes_its_line_with_the_fix_and_the_inputs_it_names(
    error: BaseException, model: type[BaseModel], line: str
) -> None:
    assert explain(error, model) == line

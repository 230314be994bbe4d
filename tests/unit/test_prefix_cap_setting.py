"""--max-peer-prefixes / WG_MAX_PEER_PREFIXES: the hub's cap on one Node's allowed-ips."""

from __future__ import annotations

import pytest

from tests.unit.builders import KEYS, node, pub
from wgkube.config import SettingsError, parse_settings
from wgkube.operator.registry import PeerRegistry
from wgkube.operator.settings import HubSettings


def settings(*argv: str) -> HubSettings:
    return parse_settings(HubSettings, ["--node-name", "hub", *argv], prog="hub", description="")


def test_the_cap_defaults_to_256_and_reads_a_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WG_MAX_PEER_PREFIXES", raising=False)
    assert settings().max_peer_prefixes == 256
    assert settings("--max-peer-prefixes", "10").max_peer_prefixes == 10
    monkeypatch.setenv("WG_MAX_PEER_PREFIXES", "7")
    assert settings().max_peer_prefixes == 7


def test_a_cap_below_one_is_a_settings_error() -> None:
    with pytest.raises(SettingsError):
        settings("--max-peer-prefixes", "0")


def test_the_registry_refuses_a_node_over_its_cap_with_the_reason() -> None:
    registry = PeerRegistry(KEYS, "hub", max_prefixes=2)
    annotations = {
        KEYS.public_key: pub(1).b64,
        KEYS.allowed_ips: "10.0.1.0/24,10.0.2.0/24,10.0.3.0/24",
    }
    registry.observe(node("big", annotations, labels={KEYS.peer: "true"}))
    assert registry.records() == []
    (entry,) = registry.invalid()
    assert entry.error is not None
    assert "3 prefixes; at most 2 are allowed on one peer" in entry.error

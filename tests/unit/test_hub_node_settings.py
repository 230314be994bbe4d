"""HubSettings.for_node: an administrator's annotations on the hub's Node win over
WG_ADDRESS / WG_HUB_PRIORITY; a bad value is a SetupError naming the annotation."""

from __future__ import annotations

import pytest

from wgkube.domain.errors import SetupError
from wgkube.domain.net import parse_interface
from wgkube.operator.settings import HubSettings

BASE = HubSettings(node_name="hub-2", hub_priority=5)


@pytest.mark.parametrize(
    ("annotations", "address", "priority"),
    [
        ({}, ("100.96.0.1/32",), 5),
        ({"other/hub-address": "10.0.0.1/32"}, ("100.96.0.1/32",), 5),
        ({"wireguard.kube/hub-address": "100.96.0.2/32"}, ("100.96.0.2/32",), 5),
        (
            {"wireguard.kube/hub-address": "100.96.0.2/32, fd00::2/128"},
            ("100.96.0.2/32", "fd00::2/128"),
            5,
        ),
        ({"wireguard.kube/hub-priority": "-20"}, ("100.96.0.1/32",), -20),
        ({"wireguard.kube/hub-priority": " 1000 "}, ("100.96.0.1/32",), 1000),
    ],
)
def test_the_nodes_annotations_win_when_present(
    annotations: dict[str, str], address: tuple[str, ...], priority: int
) -> None:
    own = BASE.for_node(annotations)
    assert own.address == tuple(parse_interface(a) for a in address)
    assert own.hub_priority == priority
    assert own.node_name == BASE.node_name


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("hub-address", "100.96.0.2", "a prefix length is required"),
        ("hub-address", "not-an-ip/32", "is not an interface address"),
        ("hub-address", " , ", "it is empty"),
        ("hub-priority", "1001", "give an integer from -1000 to 1000"),
        ("hub-priority", "1.5", "give an integer from -1000 to 1000"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_annotation_and_the_fix(
    key: str, value: str, said: str
) -> None:
    with pytest.raises(SetupError) as raised:
        BASE.for_node({f"wireguard.kube/{key}": value})
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"node hub-2: annotation wireguard.kube/{key}={value!r}")
    assert said in message
    assert message.endswith(f"(kubectl annotate node hub-2 wireguard.kube/{key}=... --overwrite)")


def test_a_custom_prefix_is_the_one_read() -> None:
    settings = HubSettings(node_name="h", annotation_prefix="wg.example.com/")
    own = settings.for_node(
        {"wg.example.com/hub-address": "100.96.0.3/32", "wireguard.kube/hub-priority": "9"}
    )
    assert own.address == (parse_interface("100.96.0.3/32"),)
    assert own.hub_priority == 0

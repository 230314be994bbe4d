"""The hub announcement's codec and the spoke's trust decision, from tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.builders import ep, nets, pub
from wgkube.domain.annotations import HubRecord
from wgkube.domain.announcement import DATA_KEY, decode, encode, trusted_hub, with_hub
from wgkube.domain.errors import AnnouncementError

HUB = HubRecord(
    node="hub-1",
    public_key=pub("hub-1"),
    endpoint=ep("203.0.113.1:51820"),
    allowed_ips=nets("10.0.0.0/8", "100.96.0.0/24"),  # canonical order
)
OTHER = HubRecord(node="hub-0", public_key=pub("hub-0"), endpoint=None, allowed_ips=nets("::/0"))


def doc(*hubs: dict[str, Any], version: Any = 1) -> dict[str, str]:
    return {DATA_KEY: json.dumps({"version": version, "hubs": list(hubs)})}


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "node": "hub-1",
        "publicKey": pub("hub-1").b64,
        "endpoint": "203.0.113.1:51820",
        "allowedIPs": ["100.96.0.0/24"],
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize("hubs", [(HUB,), (HUB, OTHER), ()], ids=["one", "two", "none"])
def test_decoding_what_was_encoded_gives_the_hubs_back_sorted_by_node(
    hubs: tuple[HubRecord, ...],
) -> None:
    assert decode(encode(hubs)) == tuple(sorted(hubs, key=lambda h: h.node))


def test_the_encoding_is_stable_whatever_the_order_of_hubs_and_networks() -> None:
    shuffled = HUB.model_copy(update={"allowed_ips": tuple(reversed(HUB.allowed_ips))})
    assert encode([HUB, OTHER]) == encode([OTHER, shuffled])
    document = json.loads(encode([HUB])[DATA_KEY])
    assert document == {
        "version": 1,
        "hubs": [
            {
                "node": "hub-1",
                "publicKey": pub("hub-1").b64,
                "endpoint": "203.0.113.1:51820",
                "allowedIPs": ["10.0.0.0/8", "100.96.0.0/24"],
            }
        ],
    }


def test_unknown_fields_are_ignored_for_later_features() -> None:
    data = {DATA_KEY: json.dumps({"version": 1, "hubs": [entry(weight=3)], "policy": "x"})}
    assert decode(data) == (HUB.model_copy(update={"allowed_ips": nets("100.96.0.0/24")}),)


def test_priority_creation_time_and_addresses_travel_with_each_hub_and_are_omitted_unset() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ranked = HUB.model_copy(
        update={"priority": 5, "created": created, "addresses": nets("100.96.0.1/32")}
    )
    assert decode(encode([ranked])) == (ranked,)
    for field in ("priority", "created", "addresses"):
        assert field not in encode([HUB])[DATA_KEY]


def test_relay_ports_travel_with_each_hub_sorted_and_an_entry_without_them_still_decodes() -> None:
    relaying = HUB.model_copy(update={"relay_ports": (("hub-2", 51821), ("hub-0", 51822))})
    (back,) = decode(encode([relaying]))
    assert back.relay_ports == (("hub-0", 51822), ("hub-2", 51821))
    assert back.relay_port_for("hub-2") == 51821
    assert back.relay_port_for("hub-9") is None
    assert "relayPorts" not in encode([HUB])[DATA_KEY]
    (old,) = decode(doc(entry()))  # written by a hub from before relays
    assert old.relay_ports == ()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"relayPorts": [51821]}, "'relayPorts' is not an object"),
        ({"relayPorts": {"hub-2": "51821"}}, "'hub-2': '51821' is not a UDP port"),
        ({"relayPorts": {"hub-2": 0}}, "is not a UDP port"),
        ({"relayPorts": {"hub-2": 70000}}, "is not a UDP port"),
        ({"relayPorts": {"hub-2": True}}, "is not a UDP port"),
        ({"relayPorts": {"": 51821}}, "empty Node name"),
        ({"priority": "high"}, "'priority' is not an integer"),
        ({"priority": True}, "'priority' is not an integer"),
        ({"created": 5}, "'created' is not a string"),
        ({"created": "yesterday"}, "'created' is not a timestamp"),
        ({"addresses": "100.96.0.1/32"}, "'addresses' is not a list of strings"),
        ({"addresses": ["not-an-address"]}, "hub 'hub-1'"),
    ],
)
def test_a_bad_priority_or_creation_time_refuses_the_announcement(
    extra: dict[str, object], message: str
) -> None:
    with pytest.raises(AnnouncementError, match=message):
        decode(doc(entry(**extra)))


def test_an_entry_without_an_endpoint_decodes_to_none() -> None:
    (hub,) = decode(doc(entry(endpoint=None)))
    assert hub.endpoint is None


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (None, "no 'hubs.json'"),
        ({}, "no 'hubs.json'"),
        ({DATA_KEY: "  "}, "no 'hubs.json'"),
        ({DATA_KEY: "{"}, "not JSON"),
        ({DATA_KEY: "[]"}, "not a JSON object"),
        (doc(entry(), version=2), "version 2 is not 1"),
        (doc(entry(), version=None), "version None is not 1"),
        ({DATA_KEY: json.dumps({"version": 1, "hubs": {}})}, "'hubs' is not a list"),
        (doc("hub-1"), "hubs[0] is not an object"),  # type: ignore[arg-type]
        (doc(entry(node=...)), "hubs[0]: 'node' is missing"),
        (doc(entry(publicKey=...)), "hub 'hub-1': 'publicKey' is missing"),
        (doc(entry(publicKey="abc")), "hub 'hub-1': "),
        (doc(entry(endpoint="hub.example.com:51820")), "hub 'hub-1': "),
        (doc(entry(endpoint=51820)), "'endpoint' is not a string"),
        (doc(entry(allowedIPs=[])), "'allowedIPs' is missing or empty"),
        (doc(entry(allowedIPs="100.96.0.0/24")), "'allowedIPs' is missing or empty"),
        (doc(entry(allowedIPs=[1])), "'allowedIPs' holds a non-string"),
        (doc(entry(allowedIPs=["100.96.0.1/24"])), "hub 'hub-1': "),
        (doc(entry(), entry()), "a hub is announced twice"),
    ],
)
def test_a_bad_document_is_refused_with_what_is_wrong(data: Any, fault: str) -> None:
    with pytest.raises(AnnouncementError) as raised:
        decode(data)
    assert fault in str(raised.value)


@pytest.mark.parametrize(
    ("hubs", "hub", "expected"),
    [
        ((), HUB, (HUB,)),
        ((OTHER,), HUB, (OTHER, HUB)),
        ((HUB, OTHER), HUB.model_copy(update={"endpoint": None}), None),
    ],
    ids=["first", "beside another", "replaces its own entry"],
)
def test_a_hub_replaces_only_its_own_entry(
    hubs: tuple[HubRecord, ...], hub: HubRecord, expected: tuple[HubRecord, ...] | None
) -> None:
    result = with_hub(hubs, hub)
    assert result == (expected if expected is not None else (OTHER, hub))


@pytest.mark.parametrize(
    ("hubs", "pinned", "expected"),
    [
        ((HUB,), None, HUB),
        ((OTHER, HUB), None, OTHER),
        ((OTHER, HUB), pub("hub-1"), HUB),
        ((HUB,), pub("hub-1"), HUB),
        ((HUB,), pub("impostor"), "no announced hub has the pinned public key"),
        ((), None, "lists no hub"),
        ((), pub("hub-1"), "lists no hub"),
    ],
)
def test_the_trusted_hub_is_the_pinned_one_or_else_the_first(
    hubs: tuple[HubRecord, ...], pinned: Any, expected: HubRecord | str
) -> None:
    if isinstance(expected, str):
        with pytest.raises(AnnouncementError) as raised:
            trusted_hub(hubs, pinned)
        assert expected in str(raised.value)
    else:
        assert trusted_hub(hubs, pinned) == expected

"""Node labels and annotations <-> peer and hub records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.builders import KEYS, ep, nets, node, pub
from wgkube.domain.annotations import (
    DEFAULT_PREFIX,
    HubRecord,
    Keys,
    PeerRecord,
    creation_time,
    decode_hub,
    decode_peer,
    is_hub,
    is_peer,
    node_address,
    registration_patch,
)
from wgkube.domain.errors import AnnotationError, InvalidInput

KEY = pub("spoke")
PK, EP, AIPS = KEYS.public_key, KEYS.endpoint, KEYS.allowed_ips


def spoke(annotations: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    base = {PK: KEY.b64, EP: "203.0.113.10:51820", AIPS: "10.0.1.0/24"}
    return node("spoke-1", base if annotations is None else annotations, **kwargs)


# -- keys ------------------------------------------------------------------------------------


def test_the_default_keys_live_under_wireguard_kube() -> None:
    keys = Keys()
    assert keys.prefix == DEFAULT_PREFIX == "wireguard.kube/"
    assert (keys.hub, keys.peer) == ("wireguard.kube/hub", "wireguard.kube/peer")
    assert keys.public_key == "wireguard.kube/public-key"
    assert keys.endpoint == "wireguard.kube/endpoint"
    assert keys.allowed_ips == "wireguard.kube/allowed-ips"
    assert keys.hub_selector() == "wireguard.kube/hub=true"


def test_a_custom_prefix_applies_to_every_key() -> None:
    keys = Keys(prefix="wg.example.com/")
    assert keys.public_key == "wg.example.com/public-key"
    assert keys.endpoint == "wg.example.com/endpoint"
    assert keys.allowed_ips == "wg.example.com/allowed-ips"
    assert keys.hub_selector() == "wg.example.com/hub=true"


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("", id="empty"),
        pytest.param("wireguard.kube", id="no-slash"),
        pytest.param("/", id="only-slash"),
        pytest.param("wireguard/kube/", id="two-slashes"),
        pytest.param("wireguard.kube//", id="double-slash"),
        pytest.param("/wireguard.kube", id="slash-first"),
        pytest.param("Wireguard.Kube/", id="uppercase"),
        pytest.param("wire guard/", id="space"),
        pytest.param("-wireguard.kube/", id="leading-dash"),
        pytest.param("wireguard-.kube/", id="label-ends-with-dash"),
        pytest.param("wireguard..kube/", id="empty-label"),
        pytest.param("wireguard_kube/", id="underscore"),
        pytest.param("a" * 254 + "/", id="longer-than-253"),
    ],
)
def test_a_prefix_that_is_not_a_dns_name_and_one_slash_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidInput, match="must be a DNS name followed by one '/'"):
        Keys(prefix=prefix)


def test_keys_are_immutable() -> None:
    keys = Keys()
    with pytest.raises(ValueError, match="frozen"):
        keys.prefix = "other.example/"  # type: ignore[misc]
    assert keys.prefix == DEFAULT_PREFIX


# -- labels, addresses, timestamps ---------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "peer", "hub"),
    [
        pytest.param({"wireguard.kube/peer": "true"}, True, False, id="peer"),
        pytest.param({"wireguard.kube/hub": "true"}, False, True, id="hub"),
        pytest.param({"wireguard.kube/peer": "True"}, False, False, id="capital-true"),
        pytest.param({"wireguard.kube/peer": "false"}, False, False, id="false"),
        pytest.param({"wireguard.kube/peer": ""}, False, False, id="empty"),
        pytest.param({"example.com/peer": "true"}, False, False, id="other-prefix"),
        pytest.param({}, False, False, id="no-labels"),
    ],
)
def test_a_role_label_counts_only_when_it_is_exactly_true(
    labels: dict[str, str], peer: bool, hub: bool
) -> None:
    body = node("n", {}, labels=labels)
    assert (is_peer(body, KEYS), is_hub(body, KEYS)) == (peer, hub)


def test_a_node_without_labels_or_metadata_has_no_role() -> None:
    assert not is_peer({}, KEYS)
    assert not is_hub({"metadata": {"labels": None}}, KEYS)


def test_the_first_address_of_a_kind_that_parses_is_used() -> None:
    body = node(
        "n",
        {},
        addresses=[
            ("Hostname", "n"),
            ("ExternalIP", "198.51.100.1"),
            ("InternalIP", "not-an-ip"),
            ("InternalIP", "10.0.0.5"),
            ("InternalIP", "10.0.0.6"),
        ],
    )
    assert str(node_address(body, "InternalIP")) == "10.0.0.5"
    assert str(node_address(body, "ExternalIP")) == "198.51.100.1"
    assert node_address(body, "InternalDNS") is None
    assert node_address({}, "InternalIP") is None


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        pytest.param("2024-05-06T07:08:09Z", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), id="Z"),
        pytest.param(
            "2024-05-06T07:08:09+00:00", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), id="offset"
        ),
        pytest.param("yesterday", None, id="garbage"),
        pytest.param(None, None, id="missing"),
        pytest.param("", None, id="empty"),
    ],
)
def test_the_creation_timestamp_parses_or_is_unknown(
    stamp: str | None, expected: datetime | None
) -> None:
    assert creation_time(node("n", {}, created=stamp)) == expected


# -- decode_peer ---------------------------------------------------------------------------


def test_a_peer_decodes_from_its_annotations() -> None:
    record = decode_peer(spoke(created="2024-02-03T04:05:06Z"), KEYS)
    assert record == PeerRecord(
        node="spoke-1",
        public_key=KEY,
        endpoint=ep("203.0.113.10:51820"),
        allowed_ips=nets("10.0.1.0/24"),
        created=datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC),
    )


def test_a_peer_decodes_with_a_custom_prefix() -> None:
    keys = Keys(prefix="wg.example.com/")
    body = node("spoke-1", {keys.public_key: KEY.b64, keys.allowed_ips: "10.0.1.0/24"})
    assert decode_peer(body, keys).allowed_ips == nets("10.0.1.0/24")
    with pytest.raises(AnnotationError, match=r"wireguard\.kube/public-key"):
        decode_peer(body, KEYS)


def test_allowed_ips_are_sorted_deduplicated_and_may_mix_families() -> None:
    body = spoke({PK: KEY.b64, AIPS: "fd00:1::/64, 10.0.2.0/24,10.0.1.0/24 10.0.2.0/24"})
    assert decode_peer(body, KEYS).allowed_ips == nets("10.0.1.0/24", "10.0.2.0/24", "fd00:1::/64")


@pytest.mark.parametrize(
    "annotations",
    [
        pytest.param({PK: KEY.b64, AIPS: "10.0.1.0/24"}, id="absent"),
        pytest.param({PK: KEY.b64, AIPS: "10.0.1.0/24", EP: ""}, id="empty"),
        pytest.param({PK: KEY.b64, AIPS: "10.0.1.0/24", EP: "  "}, id="blank"),
    ],
)
def test_a_peer_without_an_endpoint_is_waited_for(annotations: dict[str, str]) -> None:
    assert decode_peer(spoke(annotations), KEYS).endpoint is None


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        pytest.param([("InternalIP", "10.0.0.5")], "10.0.0.5/32", id="v4-host-route"),
        pytest.param([("InternalIP", "fd00::5")], "fd00::5/128", id="v6-host-route"),
        pytest.param(
            [("ExternalIP", "198.51.100.1"), ("InternalIP", "10.0.0.5")],
            "10.0.0.5/32",
            id="ignores-external-ip",
        ),
    ],
)
def test_allowed_ips_default_to_the_internal_ip_as_a_host_route(
    addresses: list[tuple[str, str]], expected: str
) -> None:
    body = spoke({PK: KEY.b64}, addresses=addresses)
    assert decode_peer(body, KEYS).allowed_ips == nets(expected)


def test_an_allowed_ips_annotation_wins_over_the_internal_ip() -> None:
    body = spoke({PK: KEY.b64, AIPS: "10.9.0.0/16"}, addresses=[("InternalIP", "10.0.0.5")])
    assert decode_peer(body, KEYS).allowed_ips == nets("10.9.0.0/16")


PEER_FAULTS = [
    pytest.param({AIPS: "10.0.1.0/24"}, PK, "missing", id="public-key-missing"),
    pytest.param({PK: "", AIPS: "10.0.1.0/24"}, PK, "missing", id="public-key-empty"),
    pytest.param({PK: "  ", AIPS: "10.0.1.0/24"}, PK, "missing", id="public-key-blank"),
    pytest.param({PK: "abc", AIPS: "10.0.1.0/24"}, PK, "44 characters", id="public-key-short"),
    pytest.param(
        {PK: KEY.b64[:20] + "!" + KEY.b64[21:], AIPS: "10.0.1.0/24"},
        PK,
        "not valid base64",
        id="public-key-bad-char",
    ),
    pytest.param(
        {PK: KEY.b64, AIPS: "10.0.1.0/24", EP: "hub.example.com:51820"},
        EP,
        "DNS names",
        id="endpoint-hostname",
    ),
    pytest.param(
        {PK: KEY.b64, AIPS: "10.0.1.0/24", EP: "203.0.113.10:0"},
        EP,
        "outside 1-65535",
        id="endpoint-port-0",
    ),
    pytest.param(
        {PK: KEY.b64, AIPS: "10.0.1.0/24", EP: "[203.0.113.10]:51820"},
        EP,
        "brackets",
        id="endpoint-brackets-on-v4",
    ),
    pytest.param({PK: KEY.b64, AIPS: "10.0.1.7/24"}, AIPS, "host bits", id="allowed-host-bits"),
    pytest.param({PK: KEY.b64, AIPS: "garbage"}, AIPS, "not a CIDR", id="allowed-garbage"),
    pytest.param({PK: KEY.b64, AIPS: ","}, AIPS, "empty", id="allowed-only-comma"),
    pytest.param(
        {PK: KEY.b64, AIPS: "10.0.1.0/24,10.0.2.0/33"}, AIPS, "not a CIDR", id="allowed-one-bad"
    ),
    pytest.param({PK: KEY.b64}, AIPS, "no InternalIP", id="allowed-missing-no-internal-ip"),
    pytest.param(
        {PK: KEY.b64, AIPS: " "}, AIPS, "no InternalIP", id="allowed-blank-no-internal-ip"
    ),
]


def _aips(value: str) -> dict[str, str]:
    return {PK: KEY.b64, AIPS: value}


def _ep(value: str) -> dict[str, str]:
    return {PK: KEY.b64, AIPS: "10.0.1.0/24", EP: value}


# Values the kernel refuses or reads differently, and values that make no sense on a peer.
STRICT_FAULTS = [
    pytest.param(_aips("fe80::1%eth0/128"), AIPS, "zone index", id="allowed-zone"),
    pytest.param(_aips("10.0.1.0/24,fe80::%1/64"), AIPS, "zone index", id="allowed-zone-numeric"),
    pytest.param(_aips("0.0.0.0/0"), AIPS, "default route", id="allowed-default-v4"),
    pytest.param(_aips("10.0.1.0/24,::/0"), AIPS, "default route", id="allowed-default-v6"),
    pytest.param(_aips("127.0.0.0/8"), AIPS, "loopback", id="allowed-loopback-v4"),
    pytest.param(_aips("::1/128"), AIPS, "loopback", id="allowed-loopback-v6"),
    pytest.param(_aips("224.0.0.1/32"), AIPS, "multicast", id="allowed-multicast-v4"),
    pytest.param(_aips("ff02::/16"), AIPS, "multicast", id="allowed-multicast-v6"),
    pytest.param(_aips("255.255.255.255/32"), AIPS, "broadcast", id="allowed-broadcast"),
    pytest.param(_aips("0.0.0.0/32"), AIPS, "unspecified", id="allowed-unspecified-v4"),
    pytest.param(_aips("::/128"), AIPS, "unspecified", id="allowed-unspecified-v6"),
    pytest.param(_aips("::ffff:10.0.0.1/128"), AIPS, "IPv4-mapped", id="allowed-v4-mapped"),
    pytest.param(_aips("010.0.0.0/8"), AIPS, "not a CIDR", id="allowed-octal-looking-octet"),
    pytest.param(_ep("[fe80::1%eth0]:51820"), EP, "zone index", id="endpoint-zone"),
    pytest.param(_ep("[::1]"), EP, "loopback", id="endpoint-loopback-v6-bare"),
    pytest.param(_ep("[::1]:51820"), EP, "loopback", id="endpoint-loopback-v6"),
    pytest.param(_ep("127.0.0.1:51820"), EP, "loopback", id="endpoint-loopback-v4"),
    pytest.param(_ep("0.0.0.0:51820"), EP, "unspecified", id="endpoint-unspecified-v4"),
    pytest.param(_ep("[::]:51820"), EP, "unspecified", id="endpoint-unspecified-v6"),
    pytest.param(_ep("224.0.0.1:51820"), EP, "multicast", id="endpoint-multicast-v4"),
    pytest.param(_ep("[ff02::1]:51820"), EP, "multicast", id="endpoint-multicast-v6"),
    pytest.param(_ep("255.255.255.255:51820"), EP, "broadcast", id="endpoint-broadcast"),
    pytest.param(_ep("[::ffff:192.0.2.1]:51820"), EP, "IPv4-mapped", id="endpoint-v4-mapped"),
]


@pytest.mark.parametrize(("annotations", "key", "fault"), STRICT_FAULTS)
def test_a_value_the_kernel_refuses_or_no_peer_can_use_is_an_annotation_error(
    annotations: dict[str, str], key: str, fault: str
) -> None:
    with pytest.raises(AnnotationError) as info:
        decode_peer(spoke(annotations), KEYS)
    assert (info.value.node, info.value.key) == ("spoke-1", key)
    assert fault in info.value.reason


def test_an_internal_ip_default_that_no_peer_can_use_is_an_annotation_error() -> None:
    body = spoke({PK: KEY.b64}, addresses=[("InternalIP", "127.0.0.1")])
    with pytest.raises(AnnotationError, match="loopback"):
        decode_peer(body, KEYS)


def test_a_peer_may_claim_up_to_the_prefix_cap_and_no_more() -> None:
    many = ",".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(300))
    assert len(decode_peer(spoke(_aips(many)), KEYS, max_prefixes=300).allowed_ips) == 300
    with pytest.raises(AnnotationError, match="300 prefixes; at most 299"):
        decode_peer(spoke(_aips(many)), KEYS, max_prefixes=299)


def test_the_default_cap_serves_a_site_with_many_subnets() -> None:
    site = ",".join(f"10.1.{i}.0/24" for i in range(256))
    assert len(decode_peer(spoke(_aips(site)), KEYS).allowed_ips) == 256
    with pytest.raises(AnnotationError, match="257 prefixes; at most 256"):
        decode_peer(spoke(_aips(site + ",10.2.0.0/24")), KEYS)


def test_duplicates_do_not_count_against_the_prefix_cap() -> None:
    record = decode_peer(spoke(_aips(",".join(["10.0.1.0/24"] * 1000))), KEYS, max_prefixes=1)
    assert record.allowed_ips == nets("10.0.1.0/24")


def test_a_hub_may_announce_a_default_route_to_its_spokes() -> None:
    # A full tunnel is the hub's choice; only a peer may never claim one.
    hub = node("hub", {PK: KEY.b64, AIPS: "0.0.0.0/0,::/0", EP: "203.0.113.1:51820"})
    assert decode_hub(hub, KEYS).allowed_ips == nets("0.0.0.0/0", "::/0")


def test_a_hub_endpoint_no_spoke_can_dial_is_an_annotation_error() -> None:
    hub = node("hub", {PK: KEY.b64, AIPS: "100.96.0.0/24", EP: "[fe80::1%eth0]:51820"})
    with pytest.raises(AnnotationError, match="zone index"):
        decode_hub(hub, KEYS)


@pytest.mark.parametrize(("annotations", "key", "fault"), PEER_FAULTS)
def test_a_bad_peer_annotation_is_an_error_naming_node_key_and_fault(
    annotations: dict[str, str], key: str, fault: str
) -> None:
    body = spoke(annotations, addresses=[("ExternalIP", "198.51.100.1"), ("InternalIP", "bad")])
    with pytest.raises(AnnotationError) as info:
        decode_peer(body, KEYS)
    err = info.value
    assert (err.node, err.key) == ("spoke-1", key)
    assert fault in err.reason
    assert "spoke-1" in str(err)
    assert key in str(err)
    assert fault in str(err)
    assert isinstance(err, InvalidInput)


def test_a_node_without_annotations_is_missing_its_public_key() -> None:
    with pytest.raises(AnnotationError, match=r"public-key.*missing"):
        decode_peer(node("bare", None), KEYS)
    with pytest.raises(AnnotationError, match=r"public-key.*missing"):
        decode_peer({"metadata": {"name": "bare", "annotations": None}}, KEYS)


# -- decode_hub ------------------------------------------------------------------------------


def test_a_hub_decodes_from_its_annotations() -> None:
    body = node("hub", {PK: KEY.b64, EP: "[2001:db8::1]:51820", AIPS: "100.96.0.0/24, 10.0.0.0/16"})
    assert decode_hub(body, KEYS) == HubRecord(
        node="hub",
        public_key=KEY,
        endpoint=ep("[2001:db8::1]:51820"),
        allowed_ips=nets("10.0.0.0/16", "100.96.0.0/24"),
    )


def test_a_hub_without_an_endpoint_decodes_with_none() -> None:
    body = node("hub", {PK: KEY.b64, AIPS: "100.96.0.1/32"})
    assert decode_hub(body, KEYS).endpoint is None


@pytest.mark.parametrize(
    ("annotations", "key", "fault"),
    [
        pytest.param({PK: KEY.b64}, AIPS, "missing", id="allowed-ips-missing"),
        pytest.param({PK: KEY.b64, AIPS: ""}, AIPS, "missing", id="allowed-ips-empty"),
        pytest.param({AIPS: "100.96.0.1/32"}, PK, "missing", id="public-key-missing"),
        pytest.param({PK: "x", AIPS: "100.96.0.1/32"}, PK, "44 characters", id="public-key-bad"),
        pytest.param(
            {PK: KEY.b64, AIPS: "100.96.0.1/32", EP: "hub.example.com"},
            EP,
            "DNS names",
            id="endpoint-hostname",
        ),
    ],
)
def test_a_bad_hub_annotation_is_an_error_naming_node_key_and_fault(
    annotations: dict[str, str], key: str, fault: str
) -> None:
    # Even with an InternalIP: a hub's allowed-ips never default.
    body = node("hub", annotations, addresses=[("InternalIP", "10.0.0.1")])
    with pytest.raises(AnnotationError) as info:
        decode_hub(body, KEYS)
    assert (info.value.node, info.value.key) == ("hub", key)
    assert fault in str(info.value)


# -- registration_patch ----------------------------------------------------------------------


def test_a_peer_registration_patch_sets_the_label_and_every_annotation() -> None:
    patch = registration_patch(
        KEYS,
        role="peer",
        public_key=KEY,
        allowed_ips=nets("10.0.1.0/24", "fd00:1::/64"),
        endpoint=ep("203.0.113.10:51820"),
    )
    assert patch == {
        "metadata": {
            "labels": {"wireguard.kube/peer": "true"},
            "annotations": {
                "wireguard.kube/public-key": KEY.b64,
                "wireguard.kube/allowed-ips": "10.0.1.0/24,fd00:1::/64",
                "wireguard.kube/endpoint": "203.0.113.10:51820",
            },
        }
    }


def test_a_hub_registration_patch_without_an_endpoint_writes_null_to_remove_a_stale_one() -> None:
    keys = Keys(prefix="wg.example.com/")
    patch = registration_patch(
        keys, role="hub", public_key=KEY, allowed_ips=nets("100.96.0.1/32"), endpoint=None
    )
    assert patch == {
        "metadata": {
            "labels": {"wg.example.com/hub": "true"},
            "annotations": {
                "wg.example.com/public-key": KEY.b64,
                "wg.example.com/allowed-ips": "100.96.0.1/32",
                "wg.example.com/endpoint": None,
            },
        }
    }


@pytest.mark.parametrize(
    "endpoint",
    [pytest.param("203.0.113.10:51821", id="v4"), pytest.param("[2001:db8::7]:1", id="v6")],
)
def test_a_registration_patch_decodes_back_to_the_same_peer(endpoint: str) -> None:
    patch = registration_patch(
        KEYS,
        role="peer",
        public_key=KEY,
        allowed_ips=nets("10.0.1.0/24", "fd00:1::/64"),
        endpoint=ep(endpoint),
    )
    body = node("spoke-1", patch["metadata"]["annotations"], labels=patch["metadata"]["labels"])
    assert is_peer(body, KEYS)
    record = decode_peer(body, KEYS)
    assert (record.public_key, record.endpoint, record.allowed_ips) == (
        KEY,
        ep(endpoint),
        nets("10.0.1.0/24", "fd00:1::/64"),
    )

"""Node labels and annotations <-> peer and hub records: the one place they are converted."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from wgkube.domain.errors import AnnotationError, InvalidInput
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import (
    Endpoint,
    IPAddress,
    IPNetwork,
    endpoint_fault,
    format_networks,
    parse_networks,
    peer_network_fault,
)

DEFAULT_PREFIX = "wireguard.kube/"
TRUE = "true"
DEFAULT_MAX_PEER_PREFIXES = 256
"""Allowed-ips entries one peer may claim unless the hub is configured otherwise."""

NodeBody = Mapping[str, Any]
"""A Node as the API returns it (JSON decoded); kopf bodies and plain dicts both fit."""


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _check_prefix(prefix: str) -> str:
    # The API server refuses keys whose prefix is not a lowercase DNS subdomain of at
    # most 253 characters; refuse them at start-up rather than on every patch.
    name, slash, rest = prefix.partition("/")
    if not slash or rest or len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise InvalidInput(f"annotation prefix {prefix!r} must be a DNS name followed by one '/'")
    return prefix


class Keys(BaseModel):
    """The label and annotation keys under one prefix (default `wireguard.kube/`)."""

    model_config = ConfigDict(frozen=True)

    prefix: str = DEFAULT_PREFIX

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        # Checked before pydantic runs, so a bad prefix raises InvalidInput (the error
        # tree) rather than a pydantic ValidationError.
        super().__init__(prefix=_check_prefix(prefix))

    def model_post_init(self, __context: Any) -> None:
        _check_prefix(self.prefix)  # also on model_validate(), which skips __init__

    @property
    def hub(self) -> str:
        return self.prefix + "hub"

    @property
    def peer(self) -> str:
        return self.prefix + "peer"

    @property
    def public_key(self) -> str:
        return self.prefix + "public-key"

    @property
    def endpoint(self) -> str:
        return self.prefix + "endpoint"

    @property
    def active_hub(self) -> str:
        """On a spoke's Node with several hubs: the hub its traffic goes through now."""
        return self.prefix + "active-hub"

    @property
    def allowed_ips(self) -> str:
        return self.prefix + "allowed-ips"

    def hub_selector(self) -> str:
        return f"{self.hub}={TRUE}"


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A spoke as the hub sees it, decoded from its Node. A plain slotted value, not a
    pydantic model: the hub holds one per peer Node (10,000 x ~850 B as a model, ~120 B
    here), and every field is made by `decode_peer`, which has checked it already."""

    node: str
    public_key: PublicKey
    endpoint: Endpoint | None
    allowed_ips: tuple[IPNetwork, ...]
    created: datetime | None = None
    """Node creationTimestamp: the older Node wins a conflict."""


class HubRecord(BaseModel):
    """The hub as a spoke sees it, decoded from the hub's Node."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    node: str
    public_key: PublicKey
    endpoint: Endpoint | None
    allowed_ips: tuple[IPNetwork, ...]
    priority: int = 0
    """--hub-priority: with several hubs, spokes prefer the highest (then the oldest Node)."""
    created: datetime | None = None
    """The hub Node's creationTimestamp: the older hub is preferred at equal priority."""
    addresses: tuple[IPNetwork, ...] = ()
    """The hub's own overlay addresses (host prefixes): the other hubs peer with it on them."""
    internal_ip: IPAddress | None = None
    """The hub's InternalIP on the cluster's node network: the gateway ordinary nodes
    route the overlay through (`wg-kube router`); None when not announced."""
    router_prefixes: tuple[IPNetwork, ...] | None = None
    """What ordinary nodes route through the hub, when the hub says (an aggregate of the
    spokes' addresses and pod CIDRs); None: its allowed-ips."""
    relay_ports: tuple[tuple[str, int], ...] = ()
    """Several hubs: (other hub's Node, UDP port) pairs, sorted by Node: the port of the
    relay interface this hub keeps for that hub (wgkube.desired.relay)."""

    def relay_port_for(self, node: str) -> int | None:
        """The port this hub listens on for `node`'s relay, None when it keeps none."""
        return next((port for name, port in self.relay_ports if name == node), None)


def node_name(node: NodeBody) -> str:
    return str(node.get("metadata", {}).get("name", ""))


def node_labels(node: NodeBody) -> Mapping[str, str]:
    return node.get("metadata", {}).get("labels") or {}


def node_annotations(node: NodeBody) -> Mapping[str, str]:
    return node.get("metadata", {}).get("annotations") or {}


def is_peer(node: NodeBody, keys: Keys) -> bool:
    return node_labels(node).get(keys.peer) == TRUE


def is_hub(node: NodeBody, keys: Keys) -> bool:
    return node_labels(node).get(keys.hub) == TRUE


def node_address(node: NodeBody, kind: str) -> IPAddress | None:
    """The Node's first status address of `kind` (InternalIP, ExternalIP) that parses."""
    for item in node.get("status", {}).get("addresses") or []:
        if item.get("type") == kind:
            try:
                return ipaddress.ip_address(str(item.get("address", "")))
            except ValueError:
                continue
    return None


def creation_time(node: NodeBody) -> datetime | None:
    stamp = node.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None


def _required(node: NodeBody, key: str) -> str:
    value = node_annotations(node).get(key)
    if value is None or not value.strip():
        raise AnnotationError(node_name(node), key, "missing (required)")
    return str(value)


def _key(node: NodeBody, key: str) -> PublicKey:
    try:
        return PublicKey.parse(_required(node, key))
    except InvalidInput as exc:
        if isinstance(exc, AnnotationError):
            raise
        raise AnnotationError(node_name(node), key, str(exc)) from exc


def _endpoint(node: NodeBody, key: str) -> Endpoint | None:
    value = node_annotations(node).get(key)
    if value is None or not value.strip():
        return None
    try:
        endpoint = Endpoint.parse(value)
    except InvalidInput as exc:
        raise AnnotationError(node_name(node), key, str(exc)) from exc
    fault = endpoint_fault(endpoint)
    if fault is not None:
        raise AnnotationError(node_name(node), key, fault)
    return endpoint


def _networks(
    node: NodeBody, key: str, *, max_items: int | None = None
) -> tuple[IPNetwork, ...] | None:
    value = node_annotations(node).get(key)
    if value is None or not value.strip():
        return None
    try:
        return parse_networks(value, max_items=max_items)
    except InvalidInput as exc:
        raise AnnotationError(node_name(node), key, str(exc)) from exc


def _peer_networks(node: NodeBody, key: str, max_items: int) -> tuple[IPNetwork, ...] | None:
    nets = _networks(node, key, max_items=max_items)
    for net in nets or ():
        fault = peer_network_fault(net)
        if fault is not None:
            raise AnnotationError(node_name(node), key, fault)
    return nets


def decode_peer(
    node: NodeBody, keys: Keys, *, max_prefixes: int = DEFAULT_MAX_PEER_PREFIXES
) -> PeerRecord:
    """A spoke's Node -> PeerRecord; raises AnnotationError naming the node and key.

    allowed-ips defaults to the Node's InternalIP as a host route, as in the original.
    As strict as the kernel and stricter where a value makes no sense on a peer: no
    zone index, no netmask form, no default route, loopback, multicast or IPv4-mapped
    prefix, at most `max_prefixes` prefixes; an endpoint must be a unicast address.
    """
    name = node_name(node)
    public_key = _key(node, keys.public_key)
    endpoint = _endpoint(node, keys.endpoint)
    allowed = _peer_networks(node, keys.allowed_ips, max_prefixes)
    if allowed is None:
        internal = node_address(node, "InternalIP")
        if internal is None:
            raise AnnotationError(
                name, keys.allowed_ips, "not set, and the Node has no InternalIP to default to"
            )
        net = ipaddress.ip_network(internal)
        fault = peer_network_fault(net)
        if fault is not None:
            raise AnnotationError(name, keys.allowed_ips, f"not set, and its InternalIP {fault}")
        allowed = (net,)
    return PeerRecord(
        node=name,
        public_key=public_key,
        endpoint=endpoint,
        allowed_ips=allowed,
        created=creation_time(node),
    )


def decode_hub(node: NodeBody, keys: Keys) -> HubRecord:
    """The hub's Node -> HubRecord; allowed-ips is required on a hub."""
    name = node_name(node)
    public_key = _key(node, keys.public_key)
    endpoint = _endpoint(node, keys.endpoint)
    allowed = _networks(node, keys.allowed_ips)
    if allowed is None:
        raise AnnotationError(name, keys.allowed_ips, "missing (required)")
    return HubRecord(node=name, public_key=public_key, endpoint=endpoint, allowed_ips=allowed)


def registration_patch(
    keys: Keys,
    *,
    role: str,
    public_key: PublicKey,
    allowed_ips: tuple[IPNetwork, ...],
    endpoint: Endpoint | None,
) -> dict[str, Any]:
    """The merge patch a node applies to itself to announce its role and WireGuard data.

    `role` is "hub" or "peer". An absent endpoint is written as null, which removes a
    stale one from an earlier run.
    """
    label = {"hub": keys.hub, "peer": keys.peer}[role]
    return {
        "metadata": {
            "labels": {label: TRUE},
            "annotations": {
                keys.public_key: public_key.b64,
                keys.allowed_ips: format_networks(allowed_ips),
                keys.endpoint: None if endpoint is None else str(endpoint),
            },
        }
    }

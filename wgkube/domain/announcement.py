"""The hub announcement: what nodes read to find and trust the hub, and its one codec.

The hub publishes it in a ConfigMap that only the hub's ServiceAccount may write and that
group `system:nodes` may read by name (manifests/10-rbac.yaml), because a kubelet's
credentials may read no Node but its own. The document is versioned and holds a list of
hubs, so several hubs fit later without a new format:

    data:
      hubs.json: {"version": 1, "hubs": [{"node": "hub-1", "publicKey": "…",
                  "endpoint": "203.0.113.1:51820", "allowedIPs": ["100.96.0.0/24"],
                  "internalIP": "10.240.0.4", "routerPrefixes": ["100.96.0.0/24"],
                  "priority": 10, "created": "2026-01-01T00:00:00+00:00",
                  "addresses": ["100.96.0.1/32"], "relayPorts": {"hub-2": 51821}}]}

`internalIP` and `routerPrefixes` are optional (`wg-kube router` reads them: ordinary
nodes route `routerPrefixes`, else `allowedIPs`, via `internalIP`); they are written only
when set, so a hub without them writes the same bytes as before.

`priority` (--hub-priority, default 0, omitted when 0) and `created` (the hub Node's
creationTimestamp, omitted when unknown) order several hubs: every spoke computes the
same preference from them (wgkube.desired.failover.preference). `addresses` (the hub's
own overlay addresses, omitted when unknown) is where the other hubs peer with it.
`relayPorts` (omitted when empty) maps each other hub's Node to the UDP port of the relay
interface this hub keeps for it (wgkube.desired.relay): that hub's relay peer dials it.

Unknown fields are ignored (a newer hub may add some); an unknown version is refused,
since its meaning is unknown.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from wgkube.domain.annotations import HubRecord
from wgkube.domain.errors import AnnouncementError, InvalidInput
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import (
    Endpoint,
    IPAddress,
    IPNetwork,
    normalize_networks,
    parse_networks,
)

NAMESPACE = "wg-kube"
"""The namespace of the announcement ConfigMap (the hub's own, as the manifests ship it)."""

NAME = "wg-kube-hub"
"""The announcement ConfigMap's name: the one name group system:nodes may read."""

DATA_KEY = "hubs.json"
VERSION = 1


def encode(hubs: Iterable[HubRecord]) -> dict[str, str]:
    """The ConfigMap `data` announcing `hubs` (sorted by Node name: stable bytes, no churn)."""
    entries = [_entry(hub) for hub in sorted(hubs, key=lambda h: h.node)]
    document = {"version": VERSION, "hubs": entries}
    return {DATA_KEY: json.dumps(document, sort_keys=True, separators=(",", ":"))}


def _entry(hub: HubRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "node": hub.node,
        "publicKey": hub.public_key.b64,
        "endpoint": None if hub.endpoint is None else str(hub.endpoint),
        "allowedIPs": [str(net) for net in normalize_networks(hub.allowed_ips)],
    }
    if hub.internal_ip is not None:
        entry["internalIP"] = str(hub.internal_ip)
    if hub.router_prefixes is not None:
        entry["routerPrefixes"] = [str(n) for n in normalize_networks(hub.router_prefixes)]
    # Several hubs; only when set, so a single hub's document stays what it was before.
    if hub.priority:
        entry["priority"] = hub.priority
    if hub.created is not None:
        entry["created"] = hub.created.isoformat()
    if hub.addresses:
        entry["addresses"] = [str(net) for net in normalize_networks(hub.addresses)]
    if hub.relay_ports:
        entry["relayPorts"] = dict(hub.relay_ports)
    return entry


def decode(data: Mapping[str, Any] | None) -> tuple[HubRecord, ...]:
    """ConfigMap `data` -> the announced hubs, sorted by Node name; AnnouncementError if
    the document is missing, malformed or of an unknown version."""
    text = (data or {}).get(DATA_KEY)
    if not isinstance(text, str) or not text.strip():
        raise AnnouncementError(f"the announcement has no {DATA_KEY!r}")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise AnnouncementError(f"{DATA_KEY!r} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise AnnouncementError(f"{DATA_KEY!r} is not a JSON object")
    if document.get("version") != VERSION:
        raise AnnouncementError(
            f"announcement version {document.get('version')!r} is not {VERSION}: "
            "this wg-kube is older than the hub's"
        )
    entries = document.get("hubs")
    if not isinstance(entries, list):
        raise AnnouncementError("'hubs' is not a list")
    hubs = [_hub(i, entry) for i, entry in enumerate(entries)]
    names = [hub.node for hub in hubs]
    if len(set(names)) != len(names):
        raise AnnouncementError(f"a hub is announced twice: {sorted(names)}")
    return tuple(sorted(hubs, key=lambda h: h.node))


def _hub(index: int, entry: Any) -> HubRecord:
    where = f"hubs[{index}]"
    if not isinstance(entry, dict):
        raise AnnouncementError(f"{where} is not an object")
    node = entry.get("node")
    if not isinstance(node, str) or not node:
        raise AnnouncementError(f"{where}: 'node' is missing")
    where = f"hub {node!r}"
    try:
        key = entry.get("publicKey")
        if not isinstance(key, str):
            raise AnnouncementError(f"{where}: 'publicKey' is missing")
        endpoint = entry.get("endpoint")
        if endpoint is not None and not isinstance(endpoint, str):
            raise AnnouncementError(f"{where}: 'endpoint' is not a string")
        allowed = entry.get("allowedIPs")
        if not isinstance(allowed, list) or not allowed:
            raise AnnouncementError(f"{where}: 'allowedIPs' is missing or empty")
        if not all(isinstance(cidr, str) for cidr in allowed):
            raise AnnouncementError(f"{where}: 'allowedIPs' holds a non-string")
        priority = entry.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise AnnouncementError(f"{where}: 'priority' is not an integer")
        created = entry.get("created")
        if created is not None and not isinstance(created, str):
            raise AnnouncementError(f"{where}: 'created' is not a string")
        addresses = entry.get("addresses", [])
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise AnnouncementError(f"{where}: 'addresses' is not a list of strings")
        relay_ports = _relay_ports(where, entry.get("relayPorts", {}))
        return HubRecord(
            node=node,
            public_key=PublicKey.parse(key),
            endpoint=Endpoint.parse(endpoint) if endpoint else None,
            allowed_ips=parse_networks(",".join(allowed)),
            priority=priority,
            created=_timestamp(where, created),
            addresses=parse_networks(",".join(addresses)) if addresses else (),
            internal_ip=_internal_ip(where, entry.get("internalIP")),
            router_prefixes=_router_prefixes(where, entry.get("routerPrefixes")),
            relay_ports=relay_ports,
        )
    except AnnouncementError:
        raise
    except InvalidInput as exc:
        raise AnnouncementError(f"{where}: {exc}") from exc


def _timestamp(where: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AnnouncementError(f"{where}: 'created' is not a timestamp: {text!r}") from exc
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _internal_ip(where: str, value: Any) -> IPAddress | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise AnnouncementError(f"{where}: 'internalIP' is not a string")
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise AnnouncementError(f"{where}: 'internalIP' {value!r} is not an IP address") from exc


def _router_prefixes(where: str, value: Any) -> tuple[IPNetwork, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(cidr, str) for cidr in value):
        raise AnnouncementError(f"{where}: 'routerPrefixes' is not a list of CIDRs")
    return parse_networks(",".join(value)) if value else ()


def _relay_ports(where: str, value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict):
        raise AnnouncementError(f"{where}: 'relayPorts' is not an object")
    out: list[tuple[str, int]] = []
    for name, port in value.items():
        if not isinstance(name, str) or not name:
            raise AnnouncementError(f"{where}: 'relayPorts' holds an empty Node name")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise AnnouncementError(f"{where}: 'relayPorts' {name!r}: {port!r} is not a UDP port")
        out.append((name, port))
    return tuple(sorted(out))


def with_hub(hubs: Iterable[HubRecord], hub: HubRecord) -> tuple[HubRecord, ...]:
    """`hubs` with `hub`'s entry replaced (or added): one hub never drops another's."""
    return tuple(sorted([h for h in hubs if h.node != hub.node] + [hub], key=lambda h: h.node))


def trusted_hub(hubs: tuple[HubRecord, ...], pinned: PublicKey | None) -> HubRecord:
    """The hub a spoke follows: with a pinned key, the hub with that key (else refused);
    without, the first by Node name (the same on every spoke). AnnouncementError when none."""
    if not hubs:
        raise AnnouncementError("the announcement lists no hub")
    if pinned is None:
        return hubs[0]
    for hub in hubs:
        if hub.public_key == pinned:
            return hub
    announced = ", ".join(f"{h.node} ({h.public_key.b64})" for h in hubs)
    raise AnnouncementError(
        f"no announced hub has the pinned public key {pinned.b64}: refusing {announced}"
    )

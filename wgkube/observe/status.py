"""`wg-kube status` (and `kubectl wg-kube status`): the whole overlay in one table, from the
API alone: Node labels and annotations, the hub's peer-health annotation, the spokes'
WireGuardTunnel conditions, the hub's rejection Events, and the hub announcement (what
`wg-kube router` routes on every other Node). Read-only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wgkube.domain import announcement
from wgkube.domain.annotations import (
    DEFAULT_PREFIX,
    HubRecord,
    Keys,
    NodeBody,
    is_hub,
    is_peer,
    node_annotations,
    node_name,
)
from wgkube.domain.errors import AnnouncementError, WgKubeError
from wgkube.kube.client import Api, KubeApiError
from wgkube.observe.report import HEALTH_ANNOTATION, HUB_CONDITION, SPOKE_CONDITION, timestamp

REJECTIONS = ("InvalidPeerConfig", "PeerConflict")
COLUMNS = (
    ("node", "NODE"),
    ("role", "ROLE"),
    ("allowed_ips", "ALLOWED-IPS"),
    ("endpoint", "ENDPOINT"),
    ("state", "STATE"),
    ("tunnel", "TUNNEL"),
    ("last_handshake", "LAST-HANDSHAKE"),
    ("rx_bytes", "RX"),
    ("tx_bytes", "TX"),
    ("detail", "DETAIL"),
)
_MESSAGE = re.compile(
    r"(?:last handshake (?P<handshake>\S+) .*?)?received (?P<rx>\d+) B, sent (?P<tx>\d+) B"
)


def _condition(node: NodeBody, kind: str) -> Mapping[str, Any] | None:
    for cond in node.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def _latest_rejections(events: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    latest: dict[str, Mapping[str, Any]] = {}
    for event in events:
        if event.get("reason") not in REJECTIONS:
            continue
        name = str(event.get("involvedObject", {}).get("name", ""))
        when = str(event.get("lastTimestamp") or event.get("eventTime") or "")
        have = latest.get(name)
        if have is None or when >= str(have.get("lastTimestamp") or have.get("eventTime") or ""):
            latest[name] = event
    return latest


def overlay(
    nodes: Sequence[NodeBody],
    events: Sequence[Mapping[str, Any]],
    keys: Keys,
    hubs: Sequence[HubRecord] = (),
) -> list[dict[str, Any]]:
    """One row per hub and per peer Node (pure: the CLI and `make demo` render it), and,
    when the announcement lists `hubs`, one per other Node: the router DaemonSet runs on
    every Node that is neither hub nor peer and routes the announced prefixes there."""
    rows: list[dict[str, Any]] = []
    health: dict[str, Any] = {}
    for node in nodes:
        if is_hub(node, keys):
            text = node_annotations(node).get(keys.prefix + HEALTH_ANNOTATION)
            if text:
                try:
                    health = json.loads(text)
                except ValueError:
                    health = {}
    listed: Mapping[str, list[Any]] = health.get("peers") or {}
    rejected = set(health.get("rejected") or ())
    counted_up = int((health.get("counts") or {}).get("up", 0))
    unlisted = [
        n
        for n in nodes
        if is_peer(n, keys) and not is_hub(n, keys)
        if node_name(n) not in listed and node_name(n) not in rejected
    ]
    # The hub lists only the peers that are not up; an unlisted peer is up by the hub's
    # word only when the hub counted that many up (else it has not seen it yet).
    hub_says_up = bool(health) and counted_up >= len(unlisted)
    rejections = _latest_rejections(events)
    routed = _router_row(hubs)
    routers: list[dict[str, Any]] = []
    for node in sorted(nodes, key=lambda n: (not is_hub(n, keys), node_name(n))):
        name = node_name(node)
        notes = node_annotations(node)
        hub = is_hub(node, keys)
        if not hub and not is_peer(node, keys):
            if routed is not None:
                routers.append({**routed, "node": name})
            continue
        row: dict[str, Any] = {
            "node": name,
            "role": "hub" if hub else "peer",
            "allowed_ips": notes.get(keys.allowed_ips, ""),
            "endpoint": notes.get(keys.endpoint, ""),
            "state": "",
            "tunnel": "",
            "last_handshake": "",
            "rx_bytes": None,
            "tx_bytes": None,
            "detail": "",
        }
        cond = _condition(node, HUB_CONDITION if hub else SPOKE_CONDITION)
        if hub:
            row["state"] = "ready" if cond and cond.get("status") == "True" else "not ready"
            row["detail"] = cond.get("message", "") if cond else "no WireGuardHub condition"
        else:
            if name in rejected:
                row["state"] = "rejected"
            elif name in listed:
                row["state"] = str(listed[name][0])
                if listed[name][1]:
                    row["last_handshake"] = timestamp(float(listed[name][1]))
            elif hub_says_up:
                row["state"] = "up"
            elif cond and cond.get("status") == "True":
                row["state"] = "up"  # the spoke's own word: handshakes with the hub are fresh
            else:
                row["state"] = "unknown"
            if cond:
                row["tunnel"] = f"{cond.get('status')} ({cond.get('reason')})"
                match = _MESSAGE.search(str(cond.get("message", "")))
                if match:
                    row["rx_bytes"] = int(match["rx"])
                    row["tx_bytes"] = int(match["tx"])
                    if match["handshake"] and not row["last_handshake"]:
                        row["last_handshake"] = match["handshake"]
            rejection = rejections.get(name)
            if rejection is not None and row["state"] in ("rejected", ""):
                row["detail"] = f"{rejection.get('reason')}: {rejection.get('message', '')}"
            elif active := notes.get(keys.active_hub):
                row["detail"] = f"via hub {active}"  # several hubs: the spoke's active one
        rows.append(row)
    return rows + routers


def _router_row(hubs: Sequence[HubRecord]) -> dict[str, Any] | None:
    """What `wg-kube router` routes on an ordinary Node, as the announcement says: the
    hub it follows (the same choice as the router's: the first by name), its prefixes
    (routerPrefixes, else allowed-ips; the router skips any that overlaps the node's own
    link) and the next hop. The router writes nothing to the API: its own /readyz says
    whether the routes are in place."""
    if not hubs:
        return None
    hub = announcement.trusted_hub(tuple(hubs), None)
    prefixes = hub.router_prefixes if hub.router_prefixes is not None else hub.allowed_ips
    if hub.internal_ip is None:
        detail = f"hub {hub.node} announces no InternalIP: no route"
    else:
        detail = f"routes via hub {hub.node} ({hub.internal_ip})"
    return {
        "node": "",
        "role": "router",
        "allowed_ips": ",".join(str(net) for net in prefixes),
        "endpoint": "",
        "state": "",
        "tunnel": "",
        "last_handshake": "",
        "rx_bytes": None,
        "tx_bytes": None,
        "detail": detail,
    }


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    cells = [[h for _, h in COLUMNS]]
    for row in rows:
        cells.append(["-" if row[k] in (None, "") else str(row[k]) for k, _ in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS) - 1)]
    lines = []
    for r in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines) + "\n"


async def collect(api: Api, keys: Keys) -> list[dict[str, Any]]:
    """Three reads: every Node, the Warning Events about Nodes, the hub announcement."""
    nodes, _ = await api.list_nodes()
    events = await api.list_events(
        "default", field_selector="involvedObject.kind=Node,type=Warning"
    )
    return overlay(nodes, events, keys, await announced_hubs(api))


async def announced_hubs(api: Api) -> tuple[HubRecord, ...]:
    """The hubs in the announcement; none when it is missing, unreadable (a viewer bound
    to an older wg-kube-status-viewer role) or malformed: the table then has no router
    rows, and the rest of it is unchanged."""
    try:
        config_map = await api.get_config_map(announcement.NAMESPACE, announcement.NAME)
        return announcement.decode(config_map.get("data"))
    except (KubeApiError, AnnouncementError):
        return ()


async def render_status(kubeconfig: Path, *, prefix: str = DEFAULT_PREFIX) -> str:
    """The table as text: what `make demo` prints."""
    async with await Api.connect(kubeconfig) as api:
        return render_table(await collect(api, Keys(prefix)))


def default_kubeconfig() -> Path:
    first = (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0]
    return Path(first) if first else Path.home() / ".kube" / "config"


async def _run(args: argparse.Namespace) -> int:
    keys = Keys(args.annotation_prefix)
    async with await Api.connect(Path(args.kubeconfig)) as api:
        while True:
            rows = await collect(api, keys)
            text = (
                json.dumps(rows, indent=1) + "\n" if args.output == "json" else render_table(rows)
            )
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            sys.stdout.write(text)
            sys.stdout.flush()
            if not args.watch:
                return 0
            await asyncio.sleep(args.interval)
            if not sys.stdout.isatty():
                sys.stdout.write("\n")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wg-kube status", description="Show the WireGuard overlay: hubs, peers, health."
    )
    parser.add_argument("--kubeconfig", default=str(default_kubeconfig()))
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("-w", "--watch", action="store_true", help="print again every interval")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between prints")
    parser.add_argument("--annotation-prefix", default=DEFAULT_PREFIX)
    args = parser.parse_args(list(argv))
    try:
        return asyncio.run(_run(args))
    except WgKubeError as exc:
        print(f"wg-kube status: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def kubectl_main() -> int:
    """`kubectl wg-kube status …`: kubectl runs the plugin `kubectl-wg_kube`."""
    args = sys.argv[1:]
    if not args or args[0] != "status":
        print("usage: kubectl wg-kube status [-o json] [--watch]", file=sys.stderr)
        return 2
    return main(args[1:])

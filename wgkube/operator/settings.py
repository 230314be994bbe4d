"""The hub operator's settings: the original's flags with the same defaults, plus ours."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from wgkube.domain.annotations import DEFAULT_MAX_PEER_PREFIXES, DEFAULT_PREFIX
from wgkube.domain.errors import InvalidInput, SetupError
from wgkube.domain.net import (
    DEFAULT_PORT,
    Endpoint,
    IPInterface,
    IPNetwork,
    parse_interface,
)
from wgkube.kernel.port import ROUTE_PROTOCOL
from wgkube.node_settings import NodeSettings

HUB_ADDRESS = "hub-address"
HUB_PRIORITY = "hub-priority"
"""Annotations (after the prefix) an administrator sets on a hub's Node to give that hub
its own overlay address(es) and priority; they win over WG_ADDRESS / WG_HUB_PRIORITY, so
one DaemonSet serves several hubs. Nodes may not set them (manifests/30-admission.yaml)."""
PRIORITY_RANGE = (-1000, 1000)


def _env(name: str, flag: str | None = None) -> Any:
    extra: dict[str, str] = {"env": name}
    if flag:
        extra["flag"] = flag
    return extra


class HubSettings(NodeSettings):
    annotation_prefix: str = Field(DEFAULT_PREFIX, json_schema_extra=_env("ANNOTATION_PREFIX"))
    """Prefix for all annotations and labels."""

    listen_port: int = Field(DEFAULT_PORT, ge=1, le=65535, json_schema_extra=_env("WG_LISTEN_PORT"))
    """WireGuard UDP listen port."""

    address: tuple[IPInterface, ...] = Field(
        (parse_interface("100.96.0.1/32"),), json_schema_extra=_env("WG_ADDRESS")
    )
    """WireGuard interface address(es), CIDR; a comma list for dual stack. The Node's
    <prefix>hub-address annotation wins (each hub of several needs its own)."""

    allowed_ips: tuple[IPNetwork, ...] | None = Field(
        None, json_schema_extra=_env("WG_ALLOWED_IPS")
    )
    """CIDRs the hub advertises to spokes, published as an annotation (default: --address)."""

    peer_cidrs: tuple[IPNetwork, ...] | None = Field(None, json_schema_extra=_env("WG_PEER_CIDRS"))
    """The pool every spoke's allowed-ips must lie in (a peer outside: PeerConflict); default:
    no pool, only the conflict and route-safety checks."""

    router_prefixes: tuple[IPNetwork, ...] | None = Field(
        None, json_schema_extra=_env("WG_ROUTER_PREFIXES")
    )
    """What ordinary cluster nodes (`wg-kube router`) route via this hub's InternalIP,
    published in the announcement: an aggregate of the spokes' addresses (and, in native
    routing, their pod CIDRs); default: none published, routers use the allowed-ips that
    do not overlap their own links."""

    node_name: str = Field(..., min_length=1, json_schema_extra=_env("NODE_NAME"))
    """This hub's Kubernetes Node name."""

    interface: str = Field(
        "wg0", min_length=1, max_length=15, json_schema_extra=_env("WG_INTERFACE")
    )
    """WireGuard interface name."""

    private_key_file: Path | None = Field(None, json_schema_extra=_env("WG_PRIVATE_KEY_FILE"))
    """Private key file; created (0600) when missing (default: <key-dir>/<interface>.key)."""

    key_dir: Path = Field(Path("/var/lib/wg-kube"), json_schema_extra=_env("WG_KEY_DIR"))
    """Directory of the default key file; mount it from the host to keep the identity."""

    endpoint: str | None = Field(None, json_schema_extra=_env("WG_ENDPOINT"))
    """Endpoint to publish, IP or IP:port (default: the Node's ExternalIP and --listen-port)."""

    kubeconfig: Path | None = Field(None, json_schema_extra=_env("KUBECONFIG"))
    """Kubeconfig for out-of-cluster use (default: in-cluster credentials)."""

    backend: Literal["auto", "kernel", "userspace", "memory"] = Field(
        "auto", json_schema_extra=_env("WG_BACKEND")
    )
    """WireGuard: kernel, userspace (wireguard-go) or auto (kernel when it can); memory: tests."""

    debounce: float = Field(0.2, ge=0, le=60, json_schema_extra=_env("WG_DEBOUNCE"))
    """Seconds to gather Node events before one reconcile (an isolated change goes at once)."""

    resync_interval: float = Field(600.0, gt=0, json_schema_extra=_env("WG_RESYNC_INTERVAL"))
    """Seconds between full resyncs: re-list Nodes (catch what a broken watch missed),
    then as a kernel resync. 10 minutes: a LIST of 10,000 Nodes is not cheap for the API."""

    kernel_resync_interval: float = Field(
        60.0, gt=0, json_schema_extra=_env("WG_KERNEL_RESYNC_INTERVAL")
    )
    """Seconds between kernel resyncs: read the device and the host's protected set back,
    recompute every peer and repair drift made by hand (no API request)."""

    persistent_keepalive: int = Field(
        0, ge=0, le=65535, json_schema_extra=_env("WG_PERSISTENT_KEEPALIVE")
    )
    """Persistent keepalive applied to every peer, seconds; 0 is off."""

    mtu: int | None = Field(None, ge=1280, le=65535, json_schema_extra=_env("WG_MTU"))
    """Interface MTU (default: leave the implementation's, 1420)."""

    route_protocol: int = Field(
        ROUTE_PROTOCOL, ge=5, le=255, json_schema_extra=_env("WG_ROUTE_PROTOCOL")
    )
    """rtnetlink protocol number marking the routes wg-kube owns."""

    max_peer_prefixes: int = Field(
        DEFAULT_MAX_PEER_PREFIXES, ge=1, le=65536, json_schema_extra=_env("WG_MAX_PEER_PREFIXES")
    )
    """Allowed-ips prefixes one Node may claim; a Node with more is rejected (an Event).

    Default 256: a site router announcing every /24 of a /16 fits, while one Node can
    no longer grow the hub's routing table and WireGuard trie by thousands of entries.
    """

    hub_priority: int = Field(
        0, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1], json_schema_extra=_env("WG_HUB_PRIORITY")
    )
    """With several hubs: spokes send through the highest priority that forwards, then
    the oldest hub Node, then the name (published in the announcement). The Node's
    <prefix>hub-priority annotation wins."""

    relay_echo_interval: float = Field(
        0.2, gt=0, le=10, json_schema_extra=_env("WG_RELAY_ECHO_INTERVAL")
    )
    """With several hubs: seconds between echoes to each spoke (and probes through each
    other hub's relay interface); one not back within an interval is a miss. Costs one
    small packet each way per spoke per interval."""

    relay_echo_misses: int = Field(3, ge=1, le=100, json_schema_extra=_env("WG_RELAY_ECHO_MISSES"))
    """With several hubs: echoes in a row a spoke leaves unanswered before this hub relays
    to it through another hub (3 x 0.2 s)."""

    relay_hold_down: float = Field(30.0, ge=0, json_schema_extra=_env("WG_RELAY_HOLD_DOWN"))
    """With several hubs: seconds a relayed spoke must answer every direct echo before
    this hub delivers to it directly again (no flapping)."""

    probe_address: str = Field("0.0.0.0:9798", json_schema_extra=_env("WG_PROBE_ADDRESS"))
    """host:port serving /healthz and /readyz; empty disables."""

    metrics_address: str = Field("127.0.0.1:9799", json_schema_extra=_env("WG_METRICS_ADDRESS"))
    """host:port serving /metrics; empty disables. Never all addresses by default: a public
    hub must not show its peers to the internet (the DaemonSet binds the Node's IP)."""

    health_interval: float = Field(10.0, gt=0, json_schema_extra=_env("WG_HEALTH_INTERVAL"))
    """Seconds between looks at peer health (Events, the hub's condition)."""

    health_handshake_limit: float = Field(
        275.0, gt=0, json_schema_extra=_env("WG_HEALTH_HANDSHAKE_LIMIT")
    )
    """Seconds after the last handshake when a peer is down (WireGuard's 180+90+5)."""

    health_keepalive: float = Field(25.0, ge=0, json_schema_extra=_env("WG_HEALTH_KEEPALIVE"))
    """Keepalive interval the spokes send at (their WG_PERSISTENT_KEEPALIVE): a peer silent
    for 3 of them is down sooner; 0 if spokes send none."""

    health_heartbeat: float = Field(300.0, gt=0, json_schema_extra=_env("WG_HEALTH_HEARTBEAT"))
    """Seconds between rewrites of an unchanged condition."""

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", json_schema_extra=_env("WG_LOG_LEVEL")
    )
    """Log level."""

    @property
    def key_path(self) -> Path:
        return self.private_key_file or self.key_dir / f"{self.interface}.key"

    def published_endpoint(self, external_ip: str | None) -> Endpoint | None:
        if self.endpoint:
            return Endpoint.parse(self.endpoint, default_port=self.listen_port)
        if external_ip:
            return Endpoint(ipaddress.ip_address(external_ip), self.listen_port)
        return None

    def routes_between_spokes(self) -> bool:
        """True when the advertised CIDRs reach beyond the hub's own addresses."""
        own = {ipaddress.ip_network(a.ip) for a in self.address}
        return any(net not in own for net in self.advertised)

    def for_node(self, annotations: Mapping[str, str]) -> HubSettings:
        """These settings with the hub Node's own address and priority, when an
        administrator annotated them (`kubectl annotate node NAME <prefix>hub-address=…`);
        SetupError naming the annotation when a value is not usable."""
        update: dict[str, Any] = {}
        key = self.annotation_prefix + HUB_ADDRESS
        if (text := annotations.get(key)) is not None:
            try:
                update["address"] = tuple(parse_interface(p) for p in text.split(",") if p.strip())
            except InvalidInput as exc:
                raise SetupError(
                    self._bad(key, text, f"{exc}; give CIDRs, e.g. 100.96.0.2/32")
                ) from exc
            if not update["address"]:
                raise SetupError(
                    self._bad(key, text, "it is empty; give CIDRs, e.g. 100.96.0.2/32")
                )
        key = self.annotation_prefix + HUB_PRIORITY
        if (text := annotations.get(key)) is not None:
            low, high = PRIORITY_RANGE
            try:
                priority = int(text.strip())
            except ValueError:
                priority = None
            if priority is None or not low <= priority <= high:
                raise SetupError(self._bad(key, text, f"give an integer from {low} to {high}"))
            update["hub_priority"] = priority
        return self.model_copy(update=update) if update else self

    def _bad(self, key: str, text: str, fix: str) -> str:
        return (
            f"node {self.node_name}: annotation {key}={text!r} is not usable: {fix} "
            f"(kubectl annotate node {self.node_name} {key}=... --overwrite)"
        )

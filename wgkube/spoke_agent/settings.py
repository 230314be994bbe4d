"""The spoke agent's settings: the original script's variables with the same defaults."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from wgkube.domain.annotations import DEFAULT_PREFIX
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import (
    DEFAULT_PORT,
    Endpoint,
    IPInterface,
    IPNetwork,
    parse_interface,
)
from wgkube.kernel.port import ROUTE_PROTOCOL
from wgkube.node_settings import NodeSettings


def _env(name: str, flag: str) -> Any:
    return {"env": name, "flag": flag}


class SpokeSettings(NodeSettings):
    kubeconfig: Path = Field(
        Path("/etc/kubernetes/kubelet.conf"), json_schema_extra=_env("KUBECONFIG", "--kubeconfig")
    )
    """Path to kubeconfig (the kubelet's credentials can patch only this Node)."""

    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        json_schema_extra=_env("NODE_NAME", "--node-name"),
    )
    """This node's Kubernetes name (default: the hostname)."""

    interface: str = Field(
        "wg0", min_length=1, max_length=15, json_schema_extra=_env("WG_INTERFACE", "--interface")
    )
    """WireGuard interface name."""

    address: tuple[IPInterface, ...] = Field(
        (parse_interface("100.96.0.2/32"),), json_schema_extra=_env("WG_ADDRESS", "--address")
    )
    """Local WireGuard address (CIDR); a comma list for dual stack."""

    listen_port: int = Field(
        DEFAULT_PORT, ge=1, le=65535, json_schema_extra=_env("WG_LISTEN_PORT", "--listen-port")
    )
    """Local listen port."""

    allowed_ips: tuple[IPNetwork, ...] | None = Field(
        None, json_schema_extra=_env("WG_ALLOWED_IPS", "--allowed-ips")
    )
    """CIDRs to advertise to the hub (default: WG_ADDRESS)."""

    hub_allowed_ips: tuple[IPNetwork, ...] | None = Field(
        None, json_schema_extra=_env("HUB_ALLOWED_IPS", "--hub-allowed-ips")
    )
    """CIDRs to route through the hub (overrides the hub's allowed-ips annotation)."""

    hub_discovery: Literal["configmap", "node"] = Field(
        "configmap", json_schema_extra=_env("HUB_DISCOVERY", "--hub-discovery")
    )
    """Where the hub is read from. `configmap` (default): the announcement ConfigMap
    wg-kube/wg-kube-hub, which only the hub's ServiceAccount may write and every node may
    read by name. `node`: the Node labelled hub, for clusters that let nodes read Nodes
    (the kubelet's own credentials may not, and any node may label itself hub unless
    manifests/30-admission.yaml is applied)."""

    hub_public_key: str | None = Field(
        None, json_schema_extra=_env("HUB_PUBLIC_KEY", "--hub-public-key")
    )
    """Pin the hub's WireGuard public key (base64): an announcement with another key is
    refused and logged, and the last trusted configuration is kept (default: no pin)."""

    annotation_prefix: str = Field(
        DEFAULT_PREFIX, json_schema_extra=_env("ANNOTATION_PREFIX", "--annotation-prefix")
    )
    """Annotation/label prefix."""

    poll_interval: float = Field(
        10.0, gt=0, json_schema_extra=_env("POLL_INTERVAL", "--poll-interval")
    )
    """Seconds between full resyncs; changes arrive by watch long before."""

    daemonize: bool = Field(False, json_schema_extra=_env("WG_DAEMONIZE", "--daemonize"))
    """Return once the interface is up and keep running in the background (cloud-init)."""

    log_file: Path = Field(
        Path("/var/log/wg-spoke.log"), json_schema_extra=_env("WG_LOG_FILE", "--log-file")
    )
    """Log file when daemonized."""

    private_key_file: Path | None = Field(
        None, json_schema_extra=_env("WG_PRIVATE_KEY_FILE", "--private-key-file")
    )
    """Private key file, created (0600) when missing (default: /var/lib/wg-kube/<iface>.key)."""

    endpoint: str | None = Field(None, json_schema_extra=_env("WG_ENDPOINT", "--endpoint"))
    """This node's own endpoint to publish, IP or IP:port (default: none; the hub learns it)."""

    persistent_keepalive: int = Field(
        25,
        ge=0,
        le=65535,
        json_schema_extra=_env("WG_PERSISTENT_KEEPALIVE", "--persistent-keepalive"),
    )
    """Keepalive towards the hub, seconds; 0 is off (spokes are usually behind NAT)."""

    backend: Literal["auto", "kernel", "userspace", "memory"] = Field(
        "auto", json_schema_extra=_env("WG_BACKEND", "--backend")
    )
    """WireGuard: kernel, userspace (wireguard-go) or auto (kernel when it can); memory: tests."""

    mtu: int | None = Field(None, ge=1280, le=65535, json_schema_extra=_env("WG_MTU", "--mtu"))
    """Interface MTU (default: the implementation's, 1420)."""

    route_protocol: int = Field(
        ROUTE_PROTOCOL,
        ge=5,
        le=255,
        json_schema_extra=_env("WG_ROUTE_PROTOCOL", "--route-protocol"),
    )
    """rtnetlink protocol number marking the routes wg-kube owns."""

    down: bool = Field(False, json_schema_extra=_env("WG_DOWN", "--down"))
    """Remove what the agent created (registration, interface, routes) and exit."""

    metrics_address: str = Field(
        "127.0.0.1:9799", json_schema_extra=_env("WG_METRICS_ADDRESS", "--metrics-address")
    )
    """host:port serving /metrics; empty disables."""

    health_interval: float = Field(
        10.0, gt=0, json_schema_extra=_env("WG_HEALTH_INTERVAL", "--health-interval")
    )
    """Seconds between looks at the tunnel (the WireGuardTunnel condition)."""

    health_handshake_limit: float = Field(
        275.0,
        gt=0,
        json_schema_extra=_env("WG_HEALTH_HANDSHAKE_LIMIT", "--health-handshake-limit"),
    )
    """Seconds after the last handshake when the tunnel is down (WireGuard's 180+90+5)."""

    health_keepalive: float = Field(
        0.0, ge=0, json_schema_extra=_env("WG_HEALTH_KEEPALIVE", "--health-keepalive")
    )
    """Keepalive interval the hub sends at (its WG_PERSISTENT_KEEPALIVE, off by default):
    silent for 3 of them is down sooner; 0 turns that rule off."""

    health_heartbeat: float = Field(
        300.0, gt=0, json_schema_extra=_env("WG_HEALTH_HEARTBEAT", "--health-heartbeat")
    )
    """Seconds between rewrites of an unchanged WireGuardTunnel condition."""

    hub_probe_interval: float = Field(
        0.2, gt=0, le=10, json_schema_extra=_env("WG_HUB_PROBE_INTERVAL", "--hub-probe-interval")
    )
    """With several hubs: seconds between data-path probes through each hub; a probe not
    back within one interval is a miss (keep it above the round trip to the hubs)."""

    hub_probe_misses: int = Field(
        3, ge=1, le=100, json_schema_extra=_env("WG_HUB_PROBE_MISSES", "--hub-probe-misses")
    )
    """With several hubs: probes in a row without an answer before a hub is down and
    traffic moves (3 x 0.2 s: failover in well under a second)."""

    hub_hold_down: float = Field(
        30.0, ge=0, json_schema_extra=_env("WG_HUB_HOLD_DOWN", "--hub-hold-down")
    )
    """With several hubs: seconds a hub that was down must answer every probe before it
    takes this spoke's traffic back (no flapping)."""

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", json_schema_extra=_env("WG_LOG_LEVEL", "--log-level")
    )
    """Log level."""

    @field_validator("hub_public_key")
    @classmethod
    def _hub_key(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            PublicKey.parse(value.strip())
            return value.strip()
        return None

    @property
    def pinned_hub_key(self) -> PublicKey | None:
        return PublicKey.parse(self.hub_public_key) if self.hub_public_key else None

    @property
    def key_path(self) -> Path:
        return self.private_key_file or Path("/var/lib/wg-kube") / f"{self.interface}.key"

    @property
    def own_endpoint(self) -> Endpoint | None:
        return (
            Endpoint.parse(self.endpoint, default_port=self.listen_port) if self.endpoint else None
        )

"""The router's settings: every field a flag and an environment variable (wgkube.config)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wgkube.domain.keys import PublicKey
from wgkube.domain.net import IPNetwork, parse_networks
from wgkube.kernel.port import MAIN_TABLE, ROUTE_PROTOCOL


def _env(name: str, flag: str) -> Any:
    return {"env": name, "flag": flag}


class RouterSettings(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True, extra="forbid")

    kubeconfig: Path | None = Field(None, json_schema_extra=_env("KUBECONFIG", "--kubeconfig"))
    """Kubeconfig (default: in-cluster credentials, the DaemonSet's ServiceAccount
    wg-kube/wg-kube-router, which may read only the hub announcement)."""

    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        json_schema_extra=_env("NODE_NAME", "--node-name"),
    )
    """This node's Kubernetes name (default: the hostname); on the hub, no routes."""

    prefixes: tuple[IPNetwork, ...] | None = Field(
        None, json_schema_extra=_env("WG_ROUTER_PREFIXES", "--prefixes")
    )
    """CIDRs to route via the hub (default: the hub's announced routerPrefixes, else its
    allowed-ips); prefixes that overlap this node's connected networks are skipped."""

    hub_public_key: str | None = Field(
        None, json_schema_extra=_env("HUB_PUBLIC_KEY", "--hub-public-key")
    )
    """Follow only the announced hub with this public key (base64); default: the first
    announced hub by name, as spokes choose."""

    route_protocol: int = Field(
        ROUTE_PROTOCOL,
        ge=5,
        le=255,
        json_schema_extra=_env("WG_ROUTE_PROTOCOL", "--route-protocol"),
    )
    """rtnetlink protocol number marking the routes wg-kube owns."""

    route_table: int = Field(
        MAIN_TABLE, ge=1, le=2**31, json_schema_extra=_env("WG_ROUTE_TABLE", "--route-table")
    )
    """Routing table of the routes (default: main, 254)."""

    poll_interval: float = Field(
        30.0, gt=0, json_schema_extra=_env("POLL_INTERVAL", "--poll-interval")
    )
    """Seconds between full resyncs (repairs a route removed by hand); changes arrive by
    watch long before."""

    probe_address: str = Field(
        "127.0.0.1:9799", json_schema_extra=_env("WG_PROBE_ADDRESS", "--probe-address")
    )
    """host:port serving /healthz and /readyz; empty disables."""

    down: bool = Field(False, json_schema_extra=_env("WG_DOWN", "--down"))
    """Remove the router's routes (proto --route-protocol with a gateway) and exit."""

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", json_schema_extra=_env("WG_LOG_LEVEL", "--log-level")
    )
    """Log level."""

    @field_validator("prefixes", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_networks(value) if value.strip() else None
        return value

    @field_validator("hub_public_key")
    @classmethod
    def _hub_key(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            PublicKey.parse(value.strip())
            return value.strip()
        return None

    @field_validator("probe_address")
    @classmethod
    def _probe(cls, value: str) -> str:
        if value and not value.rpartition(":")[2].isdigit():
            raise ValueError(f"{value!r} is not host:port")
        return value

    @property
    def pinned_hub_key(self) -> PublicKey | None:
        return PublicKey.parse(self.hub_public_key) if self.hub_public_key else None

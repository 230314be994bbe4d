"""What the hub's and the spoke's settings share: the same fields, parsed the same way."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from wgkube.domain.annotations import DEFAULT_PREFIX, Keys
from wgkube.domain.net import (
    DEFAULT_PORT,
    Endpoint,
    IPInterface,
    IPNetwork,
    normalize_networks,
    parse_interface,
    parse_networks,
)


class NodeSettings(BaseModel):
    """Subclasses redeclare these fields with their own defaults, flags and variables."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True, extra="forbid")

    annotation_prefix: str = DEFAULT_PREFIX
    interface: str = "wg0"
    address: tuple[IPInterface, ...]
    listen_port: int = DEFAULT_PORT
    allowed_ips: tuple[IPNetwork, ...] | None = None
    endpoint: str | None = None

    @field_validator("address", mode="before", check_fields=False)
    @classmethod
    def _address(cls, value: Any) -> Any:
        if isinstance(value, str):
            items = [p for p in value.replace(" ", ",").split(",") if p]
            if not items:
                raise ValueError("at least one address is required")
            return tuple(parse_interface(p) for p in items)
        return value

    @field_validator(
        "allowed_ips",
        "hub_allowed_ips",
        "peer_cidrs",
        "router_prefixes",
        mode="before",
        check_fields=False,
    )
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_networks(value) if value.strip() else None
        return value

    @field_validator("annotation_prefix", check_fields=False)
    @classmethod
    def _prefix(cls, value: str) -> str:
        Keys(prefix=value)
        return value

    @field_validator("endpoint", check_fields=False)
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value:
            Endpoint.parse(value)
        return value or None

    @field_validator("interface", check_fields=False)
    @classmethod
    def _interface(cls, value: str) -> str:
        if value in {".", ".."} or "/" in value or any(c.isspace() for c in value):
            raise ValueError(f"invalid interface name {value!r}")
        return value

    @property
    def keys(self) -> Keys:
        return Keys(prefix=self.annotation_prefix)

    @property
    def advertised(self) -> tuple[IPNetwork, ...]:
        """The allowed-ips to publish: the setting, else the networks of the addresses."""
        if self.allowed_ips:
            return self.allowed_ips
        return normalize_networks(a.network for a in self.address)

"""The spoke's desired state: its device and one peer, the hub."""

from __future__ import annotations

from wgkube.desired.hub import is_default_route
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.domain.annotations import HubRecord
from wgkube.domain.net import IPNetwork, normalize_networks


def spoke_state(
    device: DeviceSpec,
    hub: HubRecord | None,
    *,
    hub_allowed_ips: tuple[IPNetwork, ...] | None = None,
    persistent_keepalive: int = 25,
) -> DesiredState:
    """With no hub known yet, only the device is managed: an existing peer is left alone.

    `hub_allowed_ips` (HUB_ALLOWED_IPS) overrides the hub's allowed-ips annotation.
    """
    if hub is None:
        return DesiredState(device=device, peers=None)
    allowed = normalize_networks(hub_allowed_ips if hub_allowed_ips else hub.allowed_ips)
    peer = PeerSpec(
        public_key=hub.public_key,
        endpoint=hub.endpoint,
        allowed_ips=allowed,
        persistent_keepalive=persistent_keepalive,
    )
    routes = frozenset(net for net in allowed if not is_default_route(net))
    return DesiredState(device=device, peers={hub.public_key: peer}, routes=routes)

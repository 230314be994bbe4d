"""Pure functions from peer records to the desired device, peers and routes."""

from wgkube.desired.model import CONFLICT, INVALID, DesiredState, DeviceSpec, PeerSpec, Rejection

__all__ = ["CONFLICT", "INVALID", "DesiredState", "DeviceSpec", "PeerSpec", "Rejection"]

"""Pure functions: observed kernel state vs desired state -> ordered operations."""

from wgkube.diff.model import ABSENT, ObservedPeer, ObservedState, Operation
from wgkube.diff.plan import describe, plan

__all__ = ["ABSENT", "ObservedPeer", "ObservedState", "Operation", "describe", "plan"]

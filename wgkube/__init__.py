"""wg-kube: a WireGuard hub-and-spoke overlay for Kubernetes, programmed in place."""

__version__ = "0.1.0"

"""The only code that talks to the Kubernetes API outside Kopf (kubernetes-asyncio)."""

from wgkube.kube.client import Api, Forbidden, Gone, KubeApiError, load_configuration

__all__ = ["Api", "Forbidden", "Gone", "KubeApiError", "load_configuration"]

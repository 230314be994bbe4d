"""The hub operator. Kopf imports kubernetes-asyncio's client if it is there: its
generated modules are deferred first (wgkube.kube.lean)."""

from wgkube.kube import lean

lean.install()

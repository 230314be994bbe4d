"""Write and read the few kubeconfig fields that tests and the demo need."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KubeconfigInfo", "kubeconfig_dict", "load_kubeconfig", "write_kubeconfig"]


def kubeconfig_dict(
    url: str,
    *,
    user: str = "admin",
    token: str | None = None,
    cluster: str = "wgkube",
    namespace: str | None = None,
) -> dict[str, Any]:
    """A single-context kubeconfig for ``url``, authenticating with a bearer token (if any)."""
    context: dict[str, Any] = {"cluster": cluster, "user": user}
    if namespace:
        context["namespace"] = namespace
    credentials: dict[str, Any] = {"token": token} if token else {}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": url}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": f"{user}@{cluster}", "context": context}],
        "current-context": f"{user}@{cluster}",
        "preferences": {},
    }


def write_kubeconfig(
    path: str | os.PathLike[str],
    url: str,
    *,
    user: str = "admin",
    token: str | None = None,
    cluster: str = "wgkube",
    namespace: str | None = None,
) -> Path:
    """Write a kubeconfig (JSON, which every YAML reader accepts) readable only by its owner."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    content = kubeconfig_dict(url, user=user, token=token, cluster=cluster, namespace=namespace)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        json.dump(content, stream, indent=2)
        stream.write("\n")
    return target


@dataclass(frozen=True)
class KubeconfigInfo:
    """The current context of a kubeconfig, resolved to what an HTTP client needs."""

    server: str
    user: str
    token: str | None = None
    namespace: str | None = None
    certificate_authority: str | None = None
    certificate_authority_data: str | None = None  # base64, as in the file
    client_certificate: str | None = None
    client_certificate_data: str | None = None
    client_key: str | None = None
    client_key_data: str | None = None
    insecure_skip_tls_verify: bool = False


def _named(entries: Any, name: str, what: str) -> Mapping[str, Any]:
    for entry in entries or []:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            value = entry.get(what) or {}
            if isinstance(value, Mapping):
                return value
    raise ValueError(f"kubeconfig has no {what} named {name!r}")


def load_kubeconfig(path: str | os.PathLike[str], *, context: str | None = None) -> KubeconfigInfo:
    """Read a kubeconfig (YAML or JSON) and resolve its current (or given) context."""
    import yaml  # the testing extra provides it

    base = Path(path).parent
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    context_name = context or data.get("current-context")
    if not context_name:
        raise ValueError(f"{path}: no current-context")
    ctx = _named(data.get("contexts"), context_name, "context")
    cluster = _named(data.get("clusters"), ctx["cluster"], "cluster")
    user = _named(data.get("users"), ctx["user"], "user") if ctx.get("user") else {}

    def file_path(value: Any) -> str | None:
        return None if not value else str(base / str(value))

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(str(file_path(user["tokenFile"]))).read_text(encoding="utf-8").strip()
    return KubeconfigInfo(
        server=str(cluster["server"]).rstrip("/"),
        user=str(ctx.get("user") or ""),
        token=token or None,
        namespace=ctx.get("namespace"),
        certificate_authority=file_path(cluster.get("certificate-authority")),
        certificate_authority_data=cluster.get("certificate-authority-data"),
        client_certificate=file_path(user.get("client-certificate")),
        client_certificate_data=user.get("client-certificate-data"),
        client_key=file_path(user.get("client-key")),
        client_key_data=user.get("client-key-data"),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
    )

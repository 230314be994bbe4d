"""A small synchronous Kubernetes HTTP client driven by a kubeconfig, and the test-facing API.

It talks plain HTTP(S) to whatever the kubeconfig points at, so the same helpers work
against the emulator and against a real kube-apiserver.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from wgkube.testing._emulator import RequestRecord, parse_resource
from wgkube.testing.kubeconfig import KubeconfigInfo, load_kubeconfig

__all__ = [
    "ApiError",
    "ApiServer",
    "EmulatorControls",
    "HttpHelpers",
    "KubeHttpClient",
    "node_body",
    "wait_for",
]

Obj = dict[str, Any]

_PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


class ApiError(Exception):
    """A non-2xx answer of the API, with the decoded ``Status`` body when there is one."""

    def __init__(self, code: int, body: Any) -> None:
        reason = body.get("reason") if isinstance(body, Mapping) else None
        message = body.get("message") if isinstance(body, Mapping) else body
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.body = body


def _ssl_context(info: KubeconfigInfo) -> ssl.SSLContext | None:
    if not info.server.startswith("https://"):
        return None
    context = ssl.create_default_context()
    if info.insecure_skip_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif info.certificate_authority_data:
        context.load_verify_locations(
            cadata=base64.b64decode(info.certificate_authority_data).decode()
        )
    elif info.certificate_authority:
        context.load_verify_locations(cafile=info.certificate_authority)
    cert, key = info.client_certificate, info.client_key
    if info.client_certificate_data and info.client_key_data:
        workdir = Path(tempfile.mkdtemp(prefix="wgkube-client-"))
        cert, key = str(workdir / "client.crt"), str(workdir / "client.key")
        for path, data in ((cert, info.client_certificate_data), (key, info.client_key_data)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as stream:
                stream.write(base64.b64decode(data))
    if cert and key:
        context.load_cert_chain(cert, key)
    return context


class KubeHttpClient:
    """Synchronous JSON requests to the API described by a kubeconfig (http or https)."""

    def __init__(self, kubeconfig: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.info = load_kubeconfig(self.kubeconfig)
        self.timeout = timeout
        self._ssl = _ssl_context(self.info)
        self._discovery: dict[str, list[Obj]] = {}

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        url = self.info.server + path
        if query:
            url += "?" + urllib.parse.urlencode(dict(query))
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        if self.info.token:
            headers["Authorization"] = f"Bearer {self.info.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                decoded: Any = json.loads(raw)
            except ValueError:
                decoded = raw.decode(errors="replace")
            raise ApiError(exc.code, decoded) from None
        return json.loads(raw) if raw else None

    # --- resource addressing (by discovery, so any API server works) ---------------------------

    def _resources_of(self, group_version_path: str) -> builtins.list[Obj]:
        if group_version_path not in self._discovery:
            try:
                found = self.request("GET", group_version_path).get("resources", [])
            except ApiError as exc:
                if exc.code != 404:
                    raise
                found = []
            self._discovery[group_version_path] = [r for r in found if "/" not in r["name"]]
        return self._discovery[group_version_path]

    def resolve(self, resource: str) -> tuple[str, str, bool]:
        """-> (``/api/v1`` or ``/apis/g/v``, plural, namespaced)."""
        group, version, plural = parse_resource(resource)
        candidates: list[tuple[str, str | None]] = []
        if group in (None, "") and version in (None, "v1"):
            candidates.append(("/api/v1", None))
        if group != "":
            groups = self.request("GET", "/apis").get("groups", [])
            for entry in groups:
                if group is not None and entry["name"] != group:
                    continue
                versions = [v["version"] for v in entry.get("versions", [])]
                preferred = entry.get("preferredVersion", {}).get("version")
                if version is not None:
                    chosen = version if version in versions else None
                else:
                    chosen = preferred
                if chosen:
                    candidates.append((f"/apis/{entry['name']}/{chosen}", None))
        for prefix, _ in candidates:
            for entry in self._resources_of(prefix):
                if entry["name"] == plural:
                    return prefix, plural, bool(entry.get("namespaced"))
        raise ApiError(404, {"reason": "NotFound", "message": f"no such resource {resource!r}"})

    def path(
        self,
        resource: str,
        name: str | None = None,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> str:
        prefix, plural, namespaced = self.resolve(resource)
        path = prefix
        if namespaced and namespace:
            path += f"/namespaces/{urllib.parse.quote(namespace)}"
        path += f"/{plural}"
        if name is not None:
            path += f"/{urllib.parse.quote(name)}"
        if subresource is not None:
            path += f"/{subresource}"
        return path

    # --- verbs --------------------------------------------------------------------------------

    def _unless_missing(self, method: str, path: str) -> Obj | None:
        """The answer, or None on 404."""
        try:
            result: Obj = self.request(method, path)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise
        return result

    def get(self, resource: str, name: str, *, namespace: str | None = None) -> Obj | None:
        return self._unless_missing("GET", self.path(resource, name, namespace=namespace))

    def list(
        self,
        resource: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        query = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        body = self.request("GET", self.path(resource, namespace=namespace), query=query)
        items: list[Obj] = body.get("items") or []
        return items

    def create(
        self, resource: str, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> Obj:
        namespace = namespace or (body.get("metadata") or {}).get("namespace")
        result: Obj = self.request(
            "POST", self.path(resource, namespace=namespace), body=dict(body)
        )
        return result

    def replace(
        self,
        resource: str,
        name: str,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        path = self.path(resource, name, namespace=namespace, subresource=subresource)
        result: Obj = self.request("PUT", path, body=dict(body))
        return result

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj:
        path = self.path(resource, name, namespace=namespace, subresource=subresource)
        content_type = _PATCH_CONTENT_TYPES[patch_type]
        result: Obj = self.request("PATCH", path, body=patch, content_type=content_type)
        return result

    def delete(self, resource: str, name: str, *, namespace: str | None = None) -> Obj | None:
        return self._unless_missing("DELETE", self.path(resource, name, namespace=namespace))


def node_body(
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    addresses: Mapping[str, str] | None = None,
) -> Obj:
    """A minimal Node with the given addresses (``{'InternalIP': '10.0.0.1', ...}``)."""
    metadata: Obj = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    body: Obj = {"apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": {}}
    if addresses:
        body["status"] = {
            "addresses": [{"type": kind, "address": value} for kind, value in addresses.items()]
        }
    return body


@runtime_checkable
class EmulatorControls(Protocol):
    """Emulator-only powers: the request log and fault injection. Thread-safe."""

    @property
    def requests(self) -> builtins.list[RequestRecord]: ...

    def clear_requests(self) -> None: ...

    def unavailable(self) -> contextlib.AbstractContextManager[None]: ...

    def set_unavailable(self, value: bool) -> None: ...

    def drop_watches(self) -> int: ...

    @property
    def open_watches(self) -> int: ...

    def fail_next(
        self,
        code: int = 500,
        *,
        verb: str | None = None,
        resource: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
        times: int = 1,
        reason: str | None = None,
        message: str = "injected fault",
    ) -> None: ...

    def compact(self) -> int: ...

    @property
    def resource_version(self) -> int: ...

    def add_token(self, token: str, user: str) -> None: ...

    @property
    def internal_errors(self) -> builtins.list[Exception]: ...


@runtime_checkable
class ApiServer(Protocol):
    """What tests may rely on; satisfiable by the emulator and by a real control plane."""

    @property
    def url(self) -> str: ...

    @property
    def kubeconfig(self) -> Path: ...

    @property
    def controls(self) -> EmulatorControls | None: ...

    @property
    def client(self) -> KubeHttpClient: ...

    def write_kubeconfig(
        self, path: str | os.PathLike[str], *, user: str = "admin", token: str | None = None
    ) -> Path: ...

    def kubeconfig_for(self, user: str) -> Path: ...

    def get(self, resource: str, name: str, *, namespace: str | None = None) -> Obj | None: ...

    def list(
        self,
        resource: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]: ...

    def create(
        self, resource: str, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> Obj: ...

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj: ...

    def delete(self, resource: str, name: str, *, namespace: str | None = None) -> Obj | None: ...

    def create_node(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        addresses: Mapping[str, str] | None = None,
    ) -> Obj: ...

    def patch_node(
        self, name: str, patch: Any, *, patch_type: str = "merge", status: bool = False
    ) -> Obj: ...

    def delete_node(self, name: str) -> None: ...

    def events(
        self, for_object: Mapping[str, Any] | str | None = None, *, namespace: str | None = None
    ) -> builtins.list[Obj]: ...


class HttpHelpers:
    """The ApiServer helpers, implemented over HTTP with ``self.client``."""

    @property
    def client(self) -> KubeHttpClient:
        raise NotImplementedError

    def get(self, resource: str, name: str, *, namespace: str | None = None) -> Obj | None:
        return self.client.get(resource, name, namespace=namespace)

    def list(
        self,
        resource: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        return self.client.list(
            resource,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
        )

    def create(
        self, resource: str, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> Obj:
        return self.client.create(resource, body, namespace=namespace)

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj:
        return self.client.patch(
            resource,
            name,
            patch,
            namespace=namespace,
            patch_type=patch_type,
            subresource=subresource,
        )

    def delete(self, resource: str, name: str, *, namespace: str | None = None) -> Obj | None:
        return self.client.delete(resource, name, namespace=namespace)

    def create_node(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        addresses: Mapping[str, str] | None = None,
    ) -> Obj:
        body = node_body(name, labels=labels, annotations=annotations, addresses=addresses)
        return self.client.create("nodes", body)

    def patch_node(
        self, name: str, patch: Any, *, patch_type: str = "merge", status: bool = False
    ) -> Obj:
        return self.client.patch(
            "nodes", name, patch, patch_type=patch_type, subresource="status" if status else None
        )

    def delete_node(self, name: str) -> None:
        self.client.delete("nodes", name)

    def events(
        self, for_object: Mapping[str, Any] | str | None = None, *, namespace: str | None = None
    ) -> builtins.list[Obj]:
        """core/v1 Events, oldest first, optionally only those about one object (by name/uid)."""
        selectors = []
        if isinstance(for_object, str):
            selectors.append(f"involvedObject.name={for_object}")
        elif for_object is not None:
            meta = for_object.get("metadata") or {}
            if meta.get("uid"):
                selectors.append(f"involvedObject.uid={meta['uid']}")
            if meta.get("name"):
                selectors.append(f"involvedObject.name={meta['name']}")
            if for_object.get("kind"):
                selectors.append(f"involvedObject.kind={for_object['kind']}")
        items = self.client.list(
            "v1/events", namespace=namespace, field_selector=",".join(selectors) or None
        )
        return sorted(items, key=_event_order)

    def wait_for(
        self,
        predicate: Callable[[], Any],
        *,
        timeout: float = 10.0,
        interval: float = 0.05,
        message: str = "condition",
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy; return that (or fail)."""
        return wait_for(predicate, timeout=timeout, interval=interval, message=message)


def _event_order(event: Mapping[str, Any]) -> int:
    rv = (event.get("metadata") or {}).get("resourceVersion") or "0"
    return int(rv) if str(rv).isdigit() else 0


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll a synchronous predicate until truthy; raise TimeoutError after ``timeout``."""

    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)

"""The only code that talks to the API server outside Kopf: Nodes, Events and the hub
announcement ConfigMap, as JSON dicts."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from wgkube.domain.errors import ApiError, KubeconfigError
from wgkube.kube import lean

lean.install()  # before the first import of kubernetes_asyncio: see wgkube.kube.lean
from kubernetes_asyncio import client, config  # noqa: E402
from kubernetes_asyncio.client import Configuration as Configuration  # noqa: E402
from kubernetes_asyncio.client.exceptions import ApiException  # noqa: E402
from kubernetes_asyncio.config.config_exception import ConfigException  # noqa: E402

log = logging.getLogger("wgkube.kube")

COMPONENT = "wg-kube"


class KubeApiError(ApiError):
    """An API request failed; `status` is the HTTP status, or None when unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Forbidden(KubeApiError):
    """HTTP 403: a permission problem (RBAC, the Node authorizer or an admission policy),
    not an outage. The message is the API server's, which names what was refused."""


class Gone(KubeApiError):
    """A watch's resourceVersion is too old (HTTP 410): list again."""


async def load_configuration(kubeconfig: Path | None) -> Configuration:
    """An explicit kubeconfig, else in-cluster credentials; never $KUBECONFIG implicitly."""
    configuration = Configuration()
    if kubeconfig is not None:
        check_kubeconfig(kubeconfig)
        try:
            await config.load_kube_config(
                config_file=str(kubeconfig),
                client_configuration=configuration,
                persist_config=False,
            )
        except (ConfigException, ValueError, OSError, TypeError, KeyError) as exc:
            raise KubeconfigError(str(kubeconfig), f"is unusable: {exc}") from exc
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        raise KubeApiError("no kubeconfig given and not running inside a cluster")
    return configuration


def check_kubeconfig(path: Path) -> None:
    """Raise KubeconfigError (the fault and its fix) for what kubernetes-asyncio would
    report as a traceback: a missing, unreadable or malformed file, or no current context."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KubeconfigError(str(path), "does not exist: give the path of a kubeconfig") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise KubeconfigError(str(path), f"cannot be read ({reason})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeconfigError(str(path), f"is not valid YAML{where}") from exc
    if not isinstance(data, dict) or not data.get("current-context"):
        raise KubeconfigError(
            str(path),
            "has no current-context: choose one with "
            f"`kubectl config use-context NAME --kubeconfig {path}`",
        )


class Api:
    """A small typed facade over kubernetes-asyncio for the calls wg-kube makes."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._client = api_client
        self._core = client.CoreV1Api(api_client)

    @classmethod
    async def connect(cls, kubeconfig: Path | None) -> Api:
        return cls.from_configuration(await load_configuration(kubeconfig))

    @classmethod
    def from_configuration(cls, configuration: Configuration) -> Api:
        return cls(client.ApiClient(configuration))

    @property
    def host(self) -> str:
        """The API server's URL, as configured."""
        return str(self._client.configuration.host)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _json(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await call(*args, _preload_content=False, **kwargs)
            async with response:
                data: Any = await response.json(content_type=None)
                _check(response.status, data)
                if not isinstance(data, dict):
                    raise KubeApiError(f"unexpected API answer: {str(data)[:200]}")
                return data
        except ApiException as exc:
            raise _translate(exc) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise KubeApiError(
                f"the API server's TLS certificate is not trusted ({exc.certificate_error})"
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeApiError(f"API server unreachable: {exc}") from exc

    async def get_node(self, name: str) -> dict[str, Any]:
        return await self._json(self._core.read_node, name)

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch on the Node (labels and annotations; null deletes a key)."""
        return await self._json(
            self._core.patch_node, name, patch, _content_type="application/merge-patch+json"
        )

    async def patch_node_status(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A strategic merge patch on nodes/status: conditions merge by type, so the
        kubelet's own conditions (and other writers') are left alone."""
        return await self._json(
            self._core.patch_node_status,
            name,
            patch,
            _content_type="application/strategic-merge-patch+json",
        )

    async def list_nodes(
        self,
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        page: int | None = None,
        cached: bool = False,
    ) -> tuple[list[dict[str, Any]], str]:
        """The matching Nodes and the list's resourceVersion (to start a watch from).

        The arguments are node_pages'. The hub does not hold its 10,000 Nodes as one
        list: it takes node_pages into its registry (wgkube.operator.hub.list_peers).
        """
        items: list[dict[str, Any]] = []
        version = ""
        async for page_items, at in self.node_pages(
            label_selector, field_selector, page=page, cached=cached
        ):
            items.extend(page_items)
            version = at
        return items, version

    async def node_pages(
        self,
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        page: int | None = None,
        cached: bool = False,
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        """The matching Nodes page by page, each with the list's resourceVersion.

        `page`: at most that many Nodes per request, following `continue` (one snapshot;
        no single answer of 10,000 Nodes to hold twice). `cached`: resourceVersion=0,
        served from the API server's watch cache instead of a quorum read of etcd; the
        answer may be slightly old, which the registry's resourceVersion check absorbs.
        """
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        if cached:
            kwargs["resource_version"] = "0"
        if page:
            kwargs["limit"] = page
        version = ""
        while True:
            data = await self._json(self._core.list_node, **kwargs)
            meta = data.get("metadata") or {}
            version = version or str(meta.get("resourceVersion", ""))
            token = meta.get("continue")
            page_items = data.get("items") or []
            del data  # one page of full Nodes in memory at a time
            yield page_items, version
            del page_items
            if not page or not token:
                return
            # A continued list is the first page's snapshot: no resourceVersion with it.
            kwargs.pop("resource_version", None)
            kwargs["_continue"] = token

    async def watch_nodes(
        self,
        *,
        label_selector: str | None,
        field_selector: str | None = None,
        resource_version: str,
        timeout_seconds: int,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) pairs until the server ends the watch; raises Gone on HTTP 410."""
        async for item in self._watch(
            self._core.list_node,
            label_selector=label_selector,
            field_selector=field_selector,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
        ):
            yield item

    # -- ConfigMaps: the hub announcement (wgkube.domain.announcement) --------------------
    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._json(self._core.read_namespaced_config_map, name, namespace)

    async def list_config_maps(
        self, namespace: str, field_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Nodes may list the announcement only with `fieldSelector=metadata.name=…`:
        RBAC's resourceNames then matches (a list without it is refused)."""
        kwargs: dict[str, Any] = {"field_selector": field_selector} if field_selector else {}
        data = await self._json(self._core.list_namespaced_config_map, namespace, **kwargs)
        return list(data.get("items") or []), str(
            data.get("metadata", {}).get("resourceVersion", "")
        )

    async def watch_config_maps(
        self,
        namespace: str,
        *,
        field_selector: str | None,
        resource_version: str,
        timeout_seconds: int,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        async for item in self._watch(
            self._core.list_namespaced_config_map,
            namespace,
            label_selector=None,
            field_selector=field_selector,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
        ):
            yield item

    async def create_config_map(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._json(self._core.create_namespaced_config_map, namespace, body)

    async def patch_config_map(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch on the ConfigMap."""
        return await self._json(
            self._core.patch_namespaced_config_map,
            name,
            namespace,
            patch,
            _content_type="application/merge-patch+json",
        )

    async def _watch(
        self,
        call: Any,
        *args: Any,
        label_selector: str | None,
        field_selector: str | None,
        resource_version: str,
        timeout_seconds: int,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        kwargs: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_seconds,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        try:
            response: Any = await call(
                *args,
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(sock_read=timeout_seconds + 15),
                **kwargs,
            )
        except ApiException as exc:
            raise _translate(exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeApiError(f"API server unreachable: {exc}") from exc
        async with response:
            if response.status >= 400:
                _check(response.status, await response.json(content_type=None))
            try:
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = str(event.get("type")), event.get("object") or {}
                    if kind == "ERROR":
                        raise _error(obj.get("code"), obj, "watch error")
                    yield kind, obj
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise KubeApiError(f"watch broken: {exc}") from exc

    async def list_events(
        self, namespace: str = "default", field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"field_selector": field_selector} if field_selector else {}
        data = await self._json(self._core.list_namespaced_event, namespace, **kwargs)
        return list(data.get("items") or [])

    async def post_event(
        self,
        node: Mapping[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        reporting_instance: str = "",
    ) -> None:
        """A core/v1 Event about a Node (cluster-scoped objects' Events go to `default`)."""
        meta = node.get("metadata", {})
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name', 'node')}.{uuid.uuid4().hex[:16]}",
                "namespace": "default",
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Node",
                "name": meta.get("name", ""),
                "uid": meta.get("uid", meta.get("name", "")),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT, "host": reporting_instance},
            "reportingComponent": COMPONENT,
            "reportingInstance": reporting_instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._json(self._core.create_namespaced_event, "default", body)


def _error(status: int | None, data: Any, fallback: str) -> KubeApiError:
    """The error for an HTTP status and the Status body that came with it."""
    if isinstance(data, str):
        with contextlib.suppress(ValueError):
            data = json.loads(data)
    message = data.get("message") if isinstance(data, dict) else None
    cls = {410: Gone, 403: Forbidden}.get(status or 0, KubeApiError)
    return cls(f"API error {status}: {message or fallback or str(data)[:200]}", status)


def _check(status: int, data: Any) -> None:
    """kubernetes-asyncio raises nothing for errors without preloading: check here."""
    if status >= 400:
        raise _error(status, data, "")


def _translate(exc: ApiException) -> KubeApiError:
    return _error(
        getattr(exc, "status", None), getattr(exc, "body", "") or "", exc.reason or str(exc)
    )

"""The emulated kube-apiserver: kmock's HTTP plumbing with the API semantics done properly.

kmock 0.8 (pinned exactly) provides the aiohttp server, request parsing, the bundled
resource discovery data (``resources.load_bundled()``) and the Status error rendering.
Everything that kmock's own ``KubernetesEmulator`` gets wrong for this project
(see /work/shared/KMOCK.md) is replaced here: storage with uid/resourceVersion/generation,
selectors, watch semantics (resume, 410, bookmarks, timeouts, selector transitions),
patch types with conflicts, PUT, status subresources, events in two API groups,
discovery that kubectl understands, a request log and side-effect-free fault injection.

All state changes happen in synchronous methods (no ``await`` inside a write), so every
write is atomic with respect to the event loop, and watches see the writes in order.
These methods must be called in the emulator's event loop thread.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import datetime
import gzip
import importlib.resources
import json
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kmock

from wgkube.testing._patching import (
    NODE_MERGE_KEYS,
    PatchError,
    PatchTestFailedError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)
from wgkube.testing._selectors import FieldSelector, LabelSelector, SelectorError

__all__ = ["ApiStatusError", "Fault", "KubeApiEmulator", "RequestRecord", "parse_resource"]

Obj = dict[str, Any]
StorageKey = tuple[str, str]  # (group, plural); versions of one group share the storage

SERVER_VERSION: dict[str, str] = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0+wgkube.emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
}
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


MAX_PAGED_LISTS = 64
"""Paginated lists kept for their `continue` token (the oldest is forgotten first)."""


class ApiStatusError(Exception):
    """An API failure answered as a ``kind: Status`` body with this HTTP code."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


@dataclass
class RequestRecord:
    """One request as an authorizer would see it (Kubernetes verbs, not HTTP methods)."""

    verb: str  # get list watch create update patch delete deletecollection (or HTTP verb)
    api_group: str | None  # "" for core; None for non-resource URLs
    api_version: str | None
    resource: str | None
    subresource: str | None
    namespace: str | None
    name: str | None
    user: str | None  # from the bearer token (or Impersonate-User); None if anonymous
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None = None
    status: int | None = None  # filled in when answered (for watches: when the stream starts)

    @property
    def is_resource_request(self) -> bool:
        return self.resource is not None


@dataclass
class Fault:
    """A one-shot (or n-shot) error answered instead of a matching request, before any effect."""

    code: int = 500
    reason: str = "InternalError"
    message: str = "injected fault"
    verb: str | None = None
    resource: str | None = None
    subresource: str | None = None
    name: str | None = None
    namespace: str | None = None
    times: int = 1

    def matches(self, record: RequestRecord) -> bool:
        return (
            (self.verb is None or self.verb == record.verb)
            and (self.resource is None or self.resource == record.resource)
            and (self.subresource is None or self.subresource == record.subresource)
            and (self.name is None or self.name == record.name)
            and (self.namespace is None or self.namespace == record.namespace)
        )


@dataclass(frozen=True)
class _Change:
    rv: int
    key: StorageKey
    type: str  # ADDED MODIFIED DELETED
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class _Watch:
    key: StorageKey
    namespace: str | None
    name: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: asyncio.Queue[_Change | None] = field(default_factory=asyncio.Queue)

    def selects(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return self.labels.matches(obj) and self.fields.matches(obj)

    def project(self, change: _Change) -> tuple[str, Obj] | None:
        """What this watch sees of a change, as the apiserver's watch cache decides it."""
        if change.key != self.key:
            return None
        if change.type == "DELETED":
            return ("DELETED", change.obj) if self.selects(change.obj) else None
        now_selected = self.selects(change.obj)
        was_selected = self.selects(change.old)
        if now_selected and not was_selected:
            return "ADDED", change.obj
        if now_selected and was_selected:
            return "MODIFIED", change.obj
        if was_selected and change.old is not None:
            # The previous content, but with the resourceVersion of this change.
            old = copy.deepcopy(change.old)
            old["metadata"]["resourceVersion"] = str(change.rv)
            return "DELETED", old
        return None


@dataclass(frozen=True)
class _Target:
    """A resolved resource URL."""

    group: str
    version: str
    plural: str
    info: Any  # kmock.ResourceInfo
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage(self) -> StorageKey:
        return _storage_key(self.group, self.plural)

    @property
    def kind(self) -> str:
        return str(self.info.kind or self.plural.capitalize())

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _no_such_resource() -> ApiStatusError:
    return ApiStatusError(404, "NotFound", "the server could not find the requested resource")


def _storage_key(group: str, plural: str) -> StorageKey:
    if group == "events.k8s.io" and plural == "events":
        return "", "events"
    return group, plural


def _version_priority(version: str) -> tuple[int, int, int]:
    match = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if not match:
        return (0, 0, 0)
    major, stage, minor = match.groups()
    rank = {"alpha": 1, "beta": 2, None: 3}[stage]
    return (rank, int(major), int(minor or 0))


def parse_resource(spec: str) -> tuple[str | None, str | None, str]:
    """Parse ``nodes``, ``v1/nodes``, ``apps/v1/daemonsets``, ``daemonsets.apps``.

    Returns (group, version, plural); None means "any" (resolved by discovery).
    """
    parts = spec.strip("/").split("/")
    if len(parts) == 1:
        plural, _, group = parts[0].partition(".")
        return (group or None), None, plural
    if len(parts) == 2:
        return "", parts[0], parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise ValueError(f"unrecognised resource {spec!r}")


# --- events: core/v1 is the storage form; events.k8s.io/v1 is converted on the fly -----------

_EVENTS_RENAMES = (
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
)


def _core_event_to_events_v1(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    for core, new in _EVENTS_RENAMES:
        if core in out:
            out[new] = out.pop(core)
    out["apiVersion"] = "events.k8s.io/v1"
    out["kind"] = "Event"
    return out


def _events_v1_to_core_event(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    for core, new in _EVENTS_RENAMES:
        if new in out:
            out[core] = out.pop(new)
    out["apiVersion"] = "v1"
    out["kind"] = "Event"
    return out


class KubeApiEmulator(kmock.KubernetesScaffold):
    """An in-memory kube-apiserver on kmock's plumbing, for tests and the demo."""

    def __init__(
        self,
        *,
        history_size: int = 1000,
        bookmark_interval: float = 5.0,
        tokens: Mapping[str, str] | None = None,
        anonymous: bool = True,
    ) -> None:
        super().__init__()
        # As resources.load_bundled() does, minus its deprecated importlib call.
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz")
        self.resources.load_data(gzip.decompress(bundled.read_bytes()))
        self.history_size = history_size
        self.bookmark_interval = bookmark_interval
        self.tokens: dict[str, str] = dict(tokens or {})  # bearer token -> user name
        self.anonymous = anonymous  # allow requests without credentials (as system:anonymous)
        self.request_log: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self.server_address = ""  # host:port, for /api's serverAddressByClientCIDRs
        self._unavailable = False
        self._rv = 0
        self._compacted = 0  # changes up to this resourceVersion are no longer replayable
        self._history: collections.deque[_Change] = collections.deque()
        self._pages: collections.OrderedDict[str, tuple[int, list[Obj]]] = collections.OrderedDict()
        """Paginated lists in progress: continue token -> (the list's resourceVersion,
        the rest of its snapshot). Stored objects are replaced on every write, never
        changed in place, so the references are the snapshot."""
        self._store: dict[StorageKey, dict[tuple[str | None, str], Obj]] = {}
        self._watches: set[_Watch] = set()
        for namespace in DEFAULT_NAMESPACES:
            self.create_object("namespaces", {"metadata": {"name": namespace}})

    # ------------------------------------------------------------------ controls (loop thread)

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def unavailable(self) -> bool:
        return self._unavailable

    def set_unavailable(self, value: bool) -> None:
        """Answer every request with 503 while set; open watches are dropped when it is set."""
        self._unavailable = value
        if value:
            self.drop_watches()

    def drop_watches(self) -> int:
        """Close every open watch stream cleanly (as when an apiserver restarts)."""
        watches = list(self._watches)
        for watch in watches:
            watch.queue.put_nowait(None)
        self._watches.clear()
        return len(watches)

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def compact(self) -> int:
        """Forget the history (as etcd compaction does): older resourceVersions get 410 Gone."""
        self._history.clear()
        self._compacted = self._rv
        return self._rv

    def inject_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    # ------------------------------------------------------------------ resources & discovery

    def _catalogue(self) -> list[tuple[str, str, str, Any]]:
        """(group, version, plural, kmock.ResourceInfo) of every served resource."""
        result: list[tuple[str, str, str, Any]] = []
        for res in list(self.resources):
            ref: Any = res
            result.append(
                (
                    str(ref.group or ""),
                    str(ref.version or ""),
                    str(ref.plural or ""),
                    self.resources[res],
                )
            )
        return sorted(result, key=lambda item: item[:3])

    def _find_resource(
        self, group: str | None, version: str | None, plural: str
    ) -> tuple[str, str, Any]:
        candidates = [
            (g, v, p, info)
            for g, v, p, info in self._catalogue()
            if p == plural and group in (None, g) and version in (None, v)
        ]
        if not candidates:
            raise _no_such_resource()
        # The core group first (as kubectl resolves short names), then the preferred version.
        best_group = min({g for g, _, _, _ in candidates}, key=lambda g: (g != "", g))
        same_group = [c for c in candidates if c[0] == best_group]
        g, v, _, info = max(same_group, key=lambda c: _version_priority(c[1]))
        return g, v, info

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, set[str]] = collections.defaultdict(set)
        for group, version, _, _ in self._catalogue():
            if group:
                groups[group].add(version)
        return {
            group: sorted(versions, key=_version_priority, reverse=True)
            for group, versions in sorted(groups.items())
        }

    def _api_group(self, group: str, versions: list[str]) -> Obj:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _resource_list(self, group: str, version: str) -> Obj:
        resources: list[Obj] = []
        for res_group, res_version, plural, info in self._catalogue():
            if res_group != group or res_version != version:
                continue
            kind = info.kind or plural.capitalize()
            entry: Obj = {
                "name": plural,
                "singularName": info.singular or kind.lower(),
                "namespaced": bool(info.namespaced),
                "kind": kind,
                "verbs": sorted(info.verbs),
            }
            if info.shortnames:
                entry["shortNames"] = sorted(info.shortnames)
            if info.categories:
                entry["categories"] = sorted(info.categories)
            resources.append(entry)
            for sub in sorted(info.subresources):
                resources.append(
                    {
                        "name": f"{plural}/{sub}",
                        "singularName": "",
                        "namespaced": bool(info.namespaced),
                        "kind": kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if not resources:
            raise _no_such_resource()
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    def _discovery(self, parts: list[str]) -> Obj | None:
        if parts == ["version"]:
            return dict(SERVER_VERSION)
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.server_address}
                ],
            }
        if len(parts) == 2 and parts[0] == "api":
            return self._resource_list("", parts[1])
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._api_group(g, vs) for g, vs in self._groups().items()],
            }
        if len(parts) == 2 and parts[0] == "apis":
            versions = self._groups().get(parts[1])
            if not versions:
                raise ApiStatusError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            return {"kind": "APIGroup", "apiVersion": "v1", **self._api_group(parts[1], versions)}
        if len(parts) == 3 and parts[0] == "apis":
            return self._resource_list(parts[1], parts[2])
        if parts == []:
            paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/readyz", "/livez"}
            for group, versions in self._groups().items():
                paths.add(f"/apis/{group}")
                paths.update(f"/apis/{group}/{v}" for v in versions)
            return {"paths": sorted(paths)}
        return None

    def _resolve(self, parts: list[str]) -> tuple[_Target, bool] | None:
        """Resolve a resource URL into a target; the flag tells a legacy ``/watch/`` path."""
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        legacy_watch = False
        if rest and rest[0] == "watch":
            legacy_watch, rest = True, rest[1:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = kmock.resource(group, version, rest[2])
            if candidate in self.resources and self.resources[candidate].namespaced:
                namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _no_such_resource()
        plural = rest[0]
        name = rest[1] if len(rest) >= 2 else None
        subresource = rest[2] if len(rest) == 3 else None
        res = kmock.resource(group, version, plural)
        if res not in self.resources:
            raise _no_such_resource()
        info = self.resources[res]
        if subresource is not None and subresource not in info.subresources:
            raise _no_such_resource()
        return _Target(group, version, plural, info, namespace, name, subresource), legacy_watch

    def _target(
        self,
        resource: str,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> _Target:
        group, version, plural = parse_resource(resource)
        group, version, info = self._find_resource(group, version, plural)
        if not info.namespaced:
            namespace = None
        return _Target(group, version, plural, info, namespace, name, subresource)

    # ------------------------------------------------------------------ rendering

    def _render(self, target: _Target, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        if target.group == "events.k8s.io" and target.plural == "events":
            return _core_event_to_events_v1(out)
        out["apiVersion"] = target.api_version
        out["kind"] = target.kind
        return out

    def _ingest(self, target: _Target, body: Obj) -> Obj:
        if target.group == "events.k8s.io" and target.plural == "events":
            return _events_v1_to_core_event(body)
        return copy.deepcopy(body)

    def _not_found(self, target: _Target, name: str) -> ApiStatusError:
        return ApiStatusError(
            404,
            "NotFound",
            f'{target.qualified} "{name}" not found',
            {"name": name, "group": target.group, "kind": target.plural},
        )

    def _conflict(self, target: _Target, name: str) -> ApiStatusError:
        return ApiStatusError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {target.qualified} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            {"name": name, "group": target.group, "kind": target.plural},
        )

    # ------------------------------------------------------------------ storage & changes

    def _bucket(self, key: StorageKey) -> dict[tuple[str | None, str], Obj]:
        return self._store.setdefault(key, {})

    def _commit(self, key: StorageKey, change_type: str, obj: Obj, old: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        ident = (meta.get("namespace"), meta["name"])
        if change_type == "DELETED":
            self._bucket(key).pop(ident, None)
        else:
            self._bucket(key)[ident] = obj
        change = _Change(self._rv, key, change_type, copy.deepcopy(obj), old)
        self._history.append(change)
        while len(self._history) > self.history_size:
            self._compacted = self._history.popleft().rv
        for watch in self._watches:
            if watch.key == key:
                watch.queue.put_nowait(change)
        return obj

    def _current(self, target: _Target, name: str) -> Obj:
        obj = self._bucket(target.storage).get((target.namespace, name))
        if obj is None:
            raise self._not_found(target, name)
        return obj

    def _select(
        self,
        target: _Target,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> list[Obj]:
        watch = _Watch(
            target.storage,
            target.namespace,
            target.name,
            labels or LabelSelector(),
            fields or FieldSelector(),
        )
        objs = [o for o in self._bucket(target.storage).values() if watch.selects(o)]
        return sorted(
            objs, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"])
        )

    # ------------------------------------------------------------------ verbs (atomic)

    def _do_create(self, target: _Target, body: Any, *, dry_run: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise ApiStatusError(400, "BadRequest", "the body must be a JSON object")
        obj = self._ingest(target, body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiStatusError(400, "BadRequest", "metadata must be an object")
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = str(meta["generateName"]) + "".join(random.choices(_GENERATE_ALPHABET, k=5))
        if not name:
            raise ApiStatusError(
                422, "Invalid", f"{target.kind} is invalid: metadata.name: Required value"
            )
        if len(name) > 253 or not _NAME_RE.match(name):
            raise ApiStatusError(
                422,
                "Invalid",
                f'{target.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": '
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.'",
                {"name": name, "group": target.group, "kind": target.kind},
            )
        namespace: str | None = None
        if target.info.namespaced:
            body_ns = meta.get("namespace")
            if target.namespace and body_ns and body_ns != target.namespace:
                raise ApiStatusError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                )
            namespace = target.namespace or body_ns
            if not namespace:
                raise ApiStatusError(400, "BadRequest", "a namespace is required")
            if (None, namespace) not in self._bucket(("", "namespaces")):
                raise ApiStatusError(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"},
                )
        target = _Target(
            target.group,
            target.version,
            target.plural,
            target.info,
            namespace,
            name,
            target.subresource,
        )
        if (namespace, name) in self._bucket(target.storage):
            raise ApiStatusError(
                409,
                "AlreadyExists",
                f'{target.qualified} "{name}" already exists',
                {"name": name, "group": target.group, "kind": target.plural},
            )
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(transient, None)
        meta["name"] = name
        if namespace is not None:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if target.storage == ("", "namespaces"):
            obj.setdefault("status", {})["phase"] = "Active"
        storage_target = self._storage_target(target)
        obj["apiVersion"] = storage_target.api_version
        obj["kind"] = storage_target.kind
        if dry_run:
            meta["resourceVersion"] = str(self._rv)
            return self._render(target, obj)
        return self._render(target, self._commit(target.storage, "ADDED", obj, None))

    def _storage_target(self, target: _Target) -> _Target:
        if target.group == "events.k8s.io" and target.plural == "events":
            return self._target("v1/events", namespace=target.namespace, name=target.name)
        return target

    def _do_update_to(self, target: _Target, current: Obj, new: Obj, *, dry_run: bool) -> Obj:
        """Store ``new`` (already in storage form) as the next state of ``current``."""
        has_status = "status" in target.info.subresources
        if target.subresource == "status":
            result = copy.deepcopy(current)
            if "status" in new:
                result["status"] = copy.deepcopy(new["status"])
            else:
                result.pop("status", None)
        elif target.subresource is not None:
            raise ApiStatusError(
                405, "MethodNotAllowed", f"the subresource {target.subresource} is not emulated"
            )
        else:
            result = copy.deepcopy(new)
            if has_status:
                if "status" in current:
                    result["status"] = copy.deepcopy(current["status"])
                else:
                    result.pop("status", None)
        meta = result.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiStatusError(422, "Invalid", "metadata must be an object")
        old_meta = current["metadata"]
        if meta.get("name", old_meta["name"]) != old_meta["name"]:
            raise ApiStatusError(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        for immutable in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ):
            if immutable in old_meta:
                meta[immutable] = old_meta[immutable]
            else:
                meta.pop(immutable, None)
        result["apiVersion"] = current.get("apiVersion")
        result["kind"] = current.get("kind")
        if result == current:
            return current  # a no-op write: no new resourceVersion, no watch event

        def spec_part(o: Obj) -> Obj:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        if spec_part(result) != spec_part(current) and target.subresource is None:
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if dry_run:
            return result
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._commit(target.storage, "DELETED", result, copy.deepcopy(current))
        return self._commit(target.storage, "MODIFIED", result, copy.deepcopy(current))

    def _do_replace(self, target: _Target, body: Any, *, dry_run: bool = False) -> Obj:
        assert target.name is not None
        if not isinstance(body, dict):
            raise ApiStatusError(400, "BadRequest", "the body must be a JSON object")
        current = self._current(target, target.name)
        new = self._ingest(target, body)
        body_rv = (new.get("metadata") or {}).get("resourceVersion")
        if body_rv and body_rv != current["metadata"]["resourceVersion"]:
            raise self._conflict(target, target.name)
        return self._render(target, self._do_update_to(target, current, new, dry_run=dry_run))

    def _do_patch(
        self,
        target: _Target,
        patch: Any,
        patch_type: str,
        *,
        dry_run: bool = False,
    ) -> Obj:
        assert target.name is not None
        current = self._current(target, target.name)
        view = self._render(target, current)
        try:
            if patch_type == "json":
                patched = apply_json_patch(view, patch)
            elif patch_type == "merge":
                patched = apply_merge_patch(view, patch)
            elif patch_type == "strategic":
                merge_keys = NODE_MERGE_KEYS if target.plural == "nodes" else None
                patched = apply_strategic_merge_patch(view, patch, merge_keys)
            else:
                raise ApiStatusError(
                    415, "UnsupportedMediaType", f"the patch type {patch_type!r} is not supported"
                )
        except PatchTestFailedError as exc:
            raise ApiStatusError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: {exc}",
                {"name": target.name, "group": target.group, "kind": target.plural},
            ) from exc
        except PatchError as exc:
            raise ApiStatusError(422, "Invalid", str(exc)) from exc
        if not isinstance(patched, dict):
            raise ApiStatusError(422, "Invalid", "the patched object is not a JSON object")
        patched_rv = (patched.get("metadata") or {}).get("resourceVersion")
        if patched_rv and patched_rv != current["metadata"]["resourceVersion"]:
            raise self._conflict(target, target.name)
        new = self._ingest(target, patched)
        return self._render(target, self._do_update_to(target, current, new, dry_run=dry_run))

    def _do_delete(self, target: _Target, options: Any = None, *, dry_run: bool = False) -> Obj:
        assert target.name is not None
        current = self._current(target, target.name)
        preconditions = (options or {}).get("preconditions") or {}
        meta = current["metadata"]
        if preconditions.get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise self._conflict(target, target.name)
        if preconditions.get("uid") not in (None, meta["uid"]):
            raise self._conflict(target, target.name)
        if dry_run:
            return self._render(target, current)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return self._render(target, current)
            marked = copy.deepcopy(current)
            marked["metadata"]["deletionTimestamp"] = now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            marked["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
            return self._render(
                target, self._commit(target.storage, "MODIFIED", marked, copy.deepcopy(current))
            )
        if target.storage == ("", "namespaces"):
            self._delete_namespace_contents(target.name)
        final = copy.deepcopy(current)
        return self._render(
            target, self._commit(target.storage, "DELETED", final, copy.deepcopy(current))
        )

    def _delete_namespace_contents(self, namespace: str) -> None:
        for key, bucket in list(self._store.items()):
            for (ns, _name), obj in list(bucket.items()):
                if ns == namespace:
                    self._commit(key, "DELETED", copy.deepcopy(obj), copy.deepcopy(obj))

    # ------------------------------------------------------------------ Python API (loop thread)

    def get_object(self, resource: str, name: str, *, namespace: str | None = None) -> Obj | None:
        target = self._target(resource, namespace=namespace, name=name)
        obj = self._bucket(target.storage).get((target.namespace, name))
        return None if obj is None else self._render(target, obj)

    def list_objects(
        self,
        resource: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        target = self._target(resource, namespace=namespace)
        labels = LabelSelector.parse(label_selector)
        fields = FieldSelector.parse(field_selector)
        return [self._render(target, o) for o in self._select(target, labels, fields)]

    def create_object(
        self, resource: str, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> Obj:
        target = self._target(resource, namespace=namespace)
        return self._do_create(target, copy.deepcopy(dict(body)))

    def replace_object(
        self,
        resource: str,
        name: str,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        target = self._target(resource, namespace=namespace, name=name, subresource=subresource)
        return self._do_replace(target, copy.deepcopy(dict(body)))

    def patch_object(
        self,
        resource: str,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Obj:
        target = self._target(resource, namespace=namespace, name=name, subresource=subresource)
        return self._do_patch(target, copy.deepcopy(patch), patch_type)

    def delete_object(self, resource: str, name: str, *, namespace: str | None = None) -> Obj:
        target = self._target(resource, namespace=namespace, name=name)
        return self._do_delete(target)

    # ------------------------------------------------------------------ HTTP

    def _authenticate(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization", "")
        user: str | None = None
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
            if token not in self.tokens:
                raise ApiStatusError(401, "Unauthorized", "Unauthorized")
            user = self.tokens[token]
        elif not self.anonymous:
            raise ApiStatusError(401, "Unauthorized", "Unauthorized")
        impersonated = headers.get("Impersonate-User")
        return impersonated or user

    @staticmethod
    def _json_response(body: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.Response(
            body=json.dumps(body).encode(), status=status, content_type="application/json"
        )

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """The aiohttp entry point (kmock's own request parser chokes on some K8s URLs)."""
        body = await raw_request.read()
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            body=body,
            text=body.decode(errors="replace"),
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as exc:  # a bug in the emulator: answer 500 and remember it
            if self._errors:
                self._errors[-1].append(exc)
            failure = ApiStatusError(500, "InternalError", f"emulator failure: {exc!r}")
            return self._json_response(failure.status(), 500)

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        raw: aiohttp.web.BaseRequest = request._raw_request
        parts = [p for p in raw.path.strip("/").split("/") if p]
        query = dict(raw.query)
        content_type = raw.headers.get("Content-Type", "").split(";")[0].strip() or None
        record = RequestRecord(
            verb=raw.method.lower(),
            api_group=None,
            api_version=None,
            resource=None,
            subresource=None,
            namespace=None,
            name=None,
            user=None,
            method=raw.method,
            path=raw.path,
            query=query,
            content_type=content_type,
        )
        self.request_log.append(record)
        try:
            response = await self._dispatch(request, raw, parts, query, record)
        except ApiStatusError as exc:
            response = self._json_response(exc.status(), exc.code)
        if record.status is None:
            record.status = response.status
        return response

    async def _dispatch(
        self,
        request: Any,
        raw: aiohttp.web.BaseRequest,
        parts: list[str],
        query: dict[str, str],
        record: RequestRecord,
    ) -> aiohttp.web.StreamResponse:
        # Parse enough to log the request even if it is refused below.
        resolved: tuple[_Target, bool] | None = None
        resolve_error: ApiStatusError | None = None
        try:
            resolved = self._resolve(parts)
        except ApiStatusError as exc:
            resolve_error = exc
        watch_flag = query.get("watch", "").lower() in ("true", "1")
        if resolved is not None:
            target, legacy_watch = resolved
            watching = watch_flag or legacy_watch
            record.api_group = target.group
            record.api_version = target.version
            record.resource = target.plural
            record.subresource = target.subresource
            record.namespace = target.namespace
            record.name = target.name
            record.verb = {
                "GET": "watch" if watching else ("get" if target.name else "list"),
                "POST": "create",
                "PUT": "update",
                "PATCH": "patch",
                "DELETE": "delete" if target.name else "deletecollection",
            }.get(raw.method, raw.method.lower())

        try:
            record.user = self._authenticate(raw.headers)
            auth_error = None
        except ApiStatusError as exc:
            auth_error = exc
        if self._unavailable:
            raise ApiStatusError(503, "ServiceUnavailable", "the server is currently unavailable")
        if auth_error is not None:
            raise auth_error
        for fault in list(self.faults):
            if fault.matches(record):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                raise ApiStatusError(fault.code, fault.reason, fault.message)

        if parts and parts[0] in ("healthz", "readyz", "livez") and raw.method == "GET":
            return aiohttp.web.Response(text="ok")
        if resolved is None:
            if resolve_error is not None:
                raise resolve_error
            if raw.method == "GET":
                found = self._discovery(parts)
                if found is not None:
                    return self._json_response(found)
            raise _no_such_resource()

        target, _ = resolved
        body: Any = None
        if request.body:
            try:
                body = json.loads(request.body)
            except ValueError as exc:
                raise ApiStatusError(400, "BadRequest", f"the body is not JSON: {exc}") from exc
        dry_run = "All" in raw.query.getall("dryRun", [])
        verb = record.verb
        if verb == "watch":
            return await self._serve_watch(raw, target, query, record)
        if verb == "list":
            return self._json_response(self._serve_list(target, query))
        if verb == "get":
            obj = self._current(target, target.name or "")
            return self._json_response(self._render(target, obj))
        if verb == "create":
            if target.name is not None:
                raise ApiStatusError(405, "MethodNotAllowed", "POST to a named resource")
            return self._json_response(self._do_create(target, body, dry_run=dry_run), 201)
        if verb == "update":
            return self._json_response(self._do_replace(target, body, dry_run=dry_run))
        if verb == "patch":
            patch_type = PATCH_TYPES.get(record.content_type or "")
            if patch_type is None:
                raise ApiStatusError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format ({record.content_type}); "
                    "accepted media types include: " + ", ".join(sorted(PATCH_TYPES)),
                )
            return self._json_response(self._do_patch(target, body, patch_type, dry_run=dry_run))
        if verb == "delete":
            return self._json_response(self._do_delete(target, body, dry_run=dry_run))
        if verb == "deletecollection":
            labels, fields = self._selectors(query)
            items = [
                self._do_delete(
                    _Target(
                        target.group,
                        target.version,
                        target.plural,
                        target.info,
                        obj["metadata"].get("namespace"),
                        obj["metadata"]["name"],
                        None,
                    ),
                    dry_run=dry_run,
                )
                for obj in self._select(target, labels, fields)
            ]
            return self._json_response(self._list_body(target, items))
        raise ApiStatusError(405, "MethodNotAllowed", f"{raw.method} is not supported here")

    @staticmethod
    def _selectors(query: Mapping[str, str]) -> tuple[LabelSelector, FieldSelector]:
        try:
            return (
                LabelSelector.parse(query.get("labelSelector")),
                FieldSelector.parse(query.get("fieldSelector")),
            )
        except SelectorError as exc:
            raise ApiStatusError(400, "BadRequest", str(exc)) from exc

    def _list_body(self, target: _Target, items: list[Obj]) -> Obj:
        return {
            "kind": f"{target.kind}List",
            "apiVersion": target.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _serve_list(self, target: _Target, query: Mapping[str, str]) -> Obj:
        """A list, paginated as kube-apiserver does: `limit` answers that many with a
        `continue` token, and the pages that follow come from the first page's snapshot
        (its resourceVersion). With resourceVersion=0 (served from the watch cache) the
        limit is ignored, as kube-apiserver v1.37 does; a token older than a compaction
        is 410 Expired."""
        token = query.get("continue", "")
        if token:
            try:
                json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            except ValueError as exc:
                raise ApiStatusError(
                    400, "BadRequest", f"continue key is not valid: {exc}"
                ) from None
            if token not in self._pages or self._pages[token][0] < self._compacted:
                self._pages.pop(token, None)
                raise ApiStatusError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent "
                    "list result. You can start a new list without the continue parameter.",
                )
            # Not consumed: a client may send the same token again (a retried request).
            self._pages.move_to_end(token)
            rv, rest = self._pages[token]
        else:
            labels, fields = self._selectors(query)
            rv, rest = self._rv, self._select(target, labels, fields)
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as exc:
            raise ApiStatusError(400, "BadRequest", f"invalid limit {query['limit']!r}") from exc
        if query.get("resourceVersion") == "0" and not token:
            limit = 0
        page, rest = (rest[:limit], rest[limit:]) if limit > 0 else (rest, [])
        body = self._list_body(target, [self._render(target, obj) for obj in page])
        body["metadata"]["resourceVersion"] = str(rv)
        if rest:
            # Shaped as kube-apiserver's (base64 JSON); the uid makes each one unique.
            key = {"v": "meta.k8s.io/v1", "rv": rv, "start": page[-1]["metadata"]["name"]}
            key["uid"] = uuid.uuid4().hex
            following = base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")
            self._pages[following] = (rv, rest)
            while len(self._pages) > MAX_PAGED_LISTS:
                self._pages.popitem(last=False)
            body["metadata"]["continue"] = following
        return body

    def _bookmark(self, target: _Target, *, initial_end: bool = False) -> Obj:
        meta: Obj = {"resourceVersion": str(self._rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": target.kind, "apiVersion": target.api_version, "metadata": meta},
        }

    async def _serve_watch(
        self,
        raw: aiohttp.web.BaseRequest,
        target: _Target,
        query: Mapping[str, str],
        record: RequestRecord,
    ) -> aiohttp.web.StreamResponse:
        labels, fields = self._selectors(query)
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        send_initial = query.get("sendInitialEvents", "").lower() in ("true", "1")
        try:
            timeout = float(query["timeoutSeconds"]) if "timeoutSeconds" in query else None
        except ValueError as exc:
            raise ApiStatusError(400, "BadRequest", "invalid timeoutSeconds") from exc
        since_text = query.get("resourceVersion", "")

        # Everything up to registering the watch is synchronous: no change can slip in between.
        watch = _Watch(target.storage, target.namespace, target.name, labels, fields)
        initial: list[Obj] = []
        expired: Obj | None = None
        if since_text in ("", "0") or send_initial:
            initial = [
                {"type": "ADDED", "object": self._render(target, obj)}
                for obj in self._select(target, labels, fields)
            ]
        else:
            try:
                since = int(since_text)
            except ValueError as exc:
                raise ApiStatusError(
                    400, "BadRequest", f"invalid resourceVersion {since_text!r}"
                ) from exc
            if since < self._compacted:
                expired = ApiStatusError(
                    410,
                    "Expired",
                    f"too old resource version: {since} ({self._compacted + 1})",
                ).status()
            else:
                for past in self._history:
                    if past.rv > since and (seen := watch.project(past)) is not None:
                        initial.append({"type": seen[0], "object": self._render(target, seen[1])})
        if expired is None:
            self._watches.add(watch)

        response = aiohttp.web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        record.status = 200
        try:
            await response.prepare(raw)
            if expired is not None:
                await self._write_event(response, {"type": "ERROR", "object": expired})
                return response
            for event in initial:
                await self._write_event(response, event)
            if send_initial and bookmarks:
                await self._write_event(response, self._bookmark(target, initial_end=True))
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                now = loop.time()
                if deadline is not None and now >= deadline:
                    if bookmarks:
                        await self._write_event(response, self._bookmark(target))
                    break
                if bookmarks and now >= next_bookmark and watch.queue.empty():
                    await self._write_event(response, self._bookmark(target))
                    next_bookmark = now + self.bookmark_interval
                wait = 1.0
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if bookmarks:
                    wait = min(wait, max(next_bookmark - now, 0.0))
                try:
                    async with asyncio.timeout(max(wait, 0.001)):
                        change = await watch.queue.get()
                except TimeoutError:
                    if raw.transport is None or raw.transport.is_closing():
                        break
                    continue
                if change is None:  # dropped
                    break
                seen = watch.project(change)
                if seen is not None:
                    await self._write_event(
                        response, {"type": seen[0], "object": self._render(target, seen[1])}
                    )
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self._watches.discard(watch)
        return response

    @staticmethod
    async def _write_event(response: aiohttp.web.StreamResponse, event: Obj) -> None:
        await response.write(json.dumps(event).encode() + b"\n")

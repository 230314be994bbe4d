"""The hub's in-memory peer registry, fed by Node events and by full re-lists."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wgkube.domain.annotations import (
    DEFAULT_MAX_PEER_PREFIXES,
    Keys,
    NodeBody,
    PeerRecord,
    decode_peer,
    is_peer,
    node_name,
)
from wgkube.domain.errors import AnnotationError


@dataclass(frozen=True, slots=True)
class NodeRef:
    """Enough of a Node to post an Event about it."""

    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class Entry:
    ref: NodeRef
    record: PeerRecord | None
    error: str | None
    """Why the Node's data cannot be used (names the node, the key and the fault)."""


def _version(node: NodeBody) -> int | None:
    """The resourceVersion as a number: etcd revisions, which order writes. The API
    calls them opaque; where one is not a number, events are taken as they come."""
    text = str(node.get("metadata", {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else None


class PeerRegistry:
    """Node name -> decoded peer (or the reason it cannot be used). Knows nothing of kopf."""

    def __init__(
        self, keys: Keys, own_node: str, *, max_prefixes: int = DEFAULT_MAX_PEER_PREFIXES
    ) -> None:
        self.keys = keys
        self._own = own_node
        self._max_prefixes = max_prefixes
        self._entries: dict[str, Entry] = {}
        self._versions: dict[str, int] = {}
        """Newest resourceVersion taken per Node name (deletions included)."""
        self.version = 0
        """Bumped on every change, so the loop can tell whether anything happened."""
        self._changed: set[str] = set()
        """Names changed since the last `take_changes`."""

    def observe(self, node: NodeBody, *, deleted: bool = False) -> bool:
        """Take one Node as it now is; returns whether the registry changed.

        Two streams feed the registry (the watch and the lists), so a Node seen
        with a resourceVersion older than one already taken is stale and ignored.
        """
        name = node_name(node)
        if not name or name == self._own:
            return False
        version = _version(node)
        if version is not None:
            if version <= self._versions.get(name, -1):
                return False
            self._versions[name] = version
        if deleted or not is_peer(node, self.keys):
            return self._set(name, None)
        ref = NodeRef(name, str(node.get("metadata", {}).get("uid") or ""))
        try:
            entry = Entry(ref, decode_peer(node, self.keys, max_prefixes=self._max_prefixes), None)
        except AnnotationError as exc:
            entry = Entry(ref, None, str(exc))
        return self._set(name, entry)

    def replace_all(self, nodes: Iterable[NodeBody], list_version: str = "") -> bool:
        """An authoritative list: Nodes absent from it are gone (missed deletions)."""
        listing = self.listing()
        for node in nodes:
            listing.add(node)
        return listing.finish(list_version)

    def listing(self) -> Listing:
        """An authoritative list taken as it arrives, page by page (Listing)."""
        return Listing(self)

    def _set(self, name: str, entry: Entry | None) -> bool:
        old = self._entries.get(name)
        if old == entry:
            return False
        if entry is None:
            del self._entries[name]
        else:
            self._entries[name] = entry
        self.version += 1
        self._changed.add(name)
        return True

    def take_changes(self) -> dict[str, PeerRecord | None]:
        """Each Node changed since the last call, with its usable record (None: gone,
        no longer a peer, or unusable): what the incremental desired state takes."""
        changed, self._changed = self._changed, set()
        out: dict[str, PeerRecord | None] = {}
        for name in sorted(changed):
            entry = self._entries.get(name)
            out[name] = entry.record if entry is not None else None
        return out

    def records(self) -> list[PeerRecord]:
        return [e.record for e in self._entries.values() if e.record is not None]

    def invalid(self) -> list[Entry]:
        return [e for e in self._entries.values() if e.error is not None]

    def ref(self, name: str) -> NodeRef:
        entry = self._entries.get(name)
        return entry.ref if entry else NodeRef(name, "")

    def __len__(self) -> int:
        return len(self._entries)

    def _absent(self, seen: set[str], list_version: str) -> bool:
        """After a complete list: the Nodes it did not hold are gone, unless seen at a
        version newer than the list (created while it was in flight)."""
        changed = False
        at = int(list_version) if list_version.isdigit() else None
        for name in list(self._entries):
            if name in seen:
                continue
            if at is not None and self._versions.get(name, -1) > at:
                continue
            if at is not None:
                self._versions[name] = at
            changed |= self._set(name, None)
        return changed


class Listing:
    """One authoritative list into the registry: each Node is taken as it arrives (as
    a watch event is, newer versions winning), so no page is held after it is read;
    `finish` then drops the Nodes the list did not hold. A list that fails before
    `finish` has added what it read and removed nothing."""

    def __init__(self, registry: PeerRegistry) -> None:
        self._registry = registry
        self._seen: set[str] = set()
        self.changed = False

    def add(self, node: NodeBody) -> None:
        self._seen.add(node_name(node))
        self.changed |= self._registry.observe(node)

    def finish(self, list_version: str) -> bool:
        """Whether the registry changed, by this list as a whole."""
        self.changed |= self._registry._absent(self._seen, list_version)
        return self.changed

"""JSON merge patch (RFC 7386), JSON patch (RFC 6902), and strategic merge (merge keys for
the Node lists that have them, a JSON merge elsewhere)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = [
    "NODE_MERGE_KEYS",
    "PatchError",
    "PatchTestFailedError",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
]


class PatchError(ValueError):
    """A malformed patch or an operation on a missing path: the API answers 422 (or 400)."""


class PatchTestFailedError(PatchError):
    """A JSON-patch ``test`` operation failed: the API answers 422."""


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def _strip_directives(patch: Any) -> Any:
    """Drop strategic-merge directives (``$patch``, ``$setElementOrder/...``, ``$retainKeys``)."""
    if isinstance(patch, Mapping):
        return {
            key: _strip_directives(value)
            for key, value in patch.items()
            if not str(key).startswith("$")
        }
    if isinstance(patch, list):
        return [_strip_directives(item) for item in patch]
    return patch


MergeKeys = Mapping[tuple[str, ...], str]
"""Path of a list from the object's root (``("status", "conditions")``) -> its merge key."""

NODE_MERGE_KEYS: MergeKeys = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
}
"""The Node lists the API merges by key (``patchMergeKey`` in k8s.io/api/core/v1): a
writer of one condition leaves the others alone, as the kubelet and wg-kube rely on."""


def apply_strategic_merge_patch(
    target: Any, patch: Any, merge_keys: MergeKeys | None = None
) -> Any:
    """Strategic merge: a JSON merge patch, except that the lists in `merge_keys` merge
    item by item on their key, as apimachinery's strategicpatch does (measured against a
    kube-apiserver in tests/emulator/test_strategic_merge_fidelity.py):

    - an item of a known key is merged into the live one, a new key is added, an item
      ``{"<key>": k, "$patch": "delete"}`` removes k, and ``{"$patch": "replace"}`` in the
      list replaces the whole list with the other items;
    - the order is apimachinery's: the patch's items in the patch's order (or that of
      ``$setElementOrder/<list>``), the live items not in it interleaved where they were;
    - an item without the merge key is refused (when there is a live list to merge into).

    Other lists are replaced and other directives dropped (no other resource of this
    project has a merge-keyed list where the difference would matter).
    """
    return _strategic(target, patch, merge_keys or {}, ())


def _strategic(target: Any, patch: Any, keys: MergeKeys, path: tuple[str, ...]) -> Any:
    if not isinstance(patch, Mapping):
        return _strip_directives(copy.deepcopy(patch))
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        name = str(key)
        if name.startswith("$setElementOrder/"):
            field = name.removeprefix("$setElementOrder/")
            merge_key = keys.get((*path, field))
            if merge_key and field not in patch and isinstance(value, list):
                result[field] = _merge_list(result.get(field), [], merge_key, value, keys)
            continue
        if name.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        merge_key = keys.get((*path, name))
        if merge_key and isinstance(value, list):
            order = patch.get(f"$setElementOrder/{name}")
            result[key] = _merge_list(
                result.get(key), value, merge_key, order if isinstance(order, list) else None, keys
            )
        else:
            result[key] = _strategic(result.get(key), value, keys, (*path, name))
    return result


def _merge_list(
    live: Any, patch: list[Any], key: str, order: list[Any] | None, keys: MergeKeys
) -> list[Any]:
    original = list(live) if isinstance(live, list) else []
    if not original:
        # Nothing to merge into: the API server takes the items as they are (unchecked).
        return [
            _strip_directives(i)
            for i in patch
            if not (isinstance(i, Mapping) and i.get("$patch") in ("delete", "replace"))
        ]
    items: list[Mapping[str, Any]] = []
    deleted: set[Any] = set()
    replace = False
    for item in patch:
        if not isinstance(item, Mapping):
            raise PatchError(f"a list merged by {key!r} holds a non-object: {item!r}")
        directive = item.get("$patch")
        if directive == "replace":
            replace = True
            continue
        if key not in item:
            raise PatchError(f"map: {dict(item)!r} does not contain declared merge key: {key}")
        if directive == "delete":
            deleted.add(item[key])
        else:
            items.append(item)
    if replace:
        return [_strip_directives(item) for item in items]
    pending = {item[key]: item for item in items}
    merged: list[Any] = []
    for live_item in original:
        k = live_item.get(key) if isinstance(live_item, Mapping) else None
        if k in deleted:
            continue
        if k in pending:
            merged.append(_strategic(live_item, pending.pop(k), keys, ()))
        else:
            merged.append(copy.deepcopy(live_item))
    merged += [_strategic({}, item, keys, ()) for k, item in pending.items()]
    wanted = (
        [o.get(key) for o in order if isinstance(o, Mapping)]
        if order
        else list(dict.fromkeys(item[key] for item in items))
    )

    def key_of(item: Any) -> Any:
        return item.get(key) if isinstance(item, Mapping) else None

    ordered = sorted(
        (m for m in merged if key_of(m) in wanted), key=lambda m: wanted.index(key_of(m))
    )
    server_only = [m for m in merged if key_of(m) not in wanted]
    return _merge_sorted(server_only, ordered, [key_of(o) for o in original], key_of)


def _merge_sorted(
    left: list[Any], right: list[Any], server_order: list[Any], key_of: Any
) -> list[Any]:
    """apimachinery's mergeSortedSlice: `left` (live-only items) inserted into `right`
    (the patch's), each before the first item that came after it in the live list."""
    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if i >= len(left):
            out.append(right[j])
            j += 1
        elif j >= len(right):
            out.append(left[i])
            i += 1
        else:
            li, ri = key_of(left[i]), key_of(right[j])
            if (
                li in server_order
                and ri in server_order
                and (server_order.index(li) < server_order.index(ri))
            ):
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}")
    return [_unescape(token) for token in pointer[1:].split("/")]


def _parent(doc: Any, tokens: list[str], pointer: str) -> Any:
    current = doc
    for token in tokens[:-1]:
        if isinstance(current, dict):
            if token not in current:
                raise PatchError(f"path not found: {pointer!r}")
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(current, token, pointer)]
        else:
            raise PatchError(f"path not found: {pointer!r}")
    return current


def _index(container: list[Any], token: str, pointer: str, *, allow_end: bool = False) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit():
        raise PatchError(f"invalid array index in {pointer!r}")
    index = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if index > limit:
        raise PatchError(f"array index out of range in {pointer!r}")
    return index


def _get(doc: Any, pointer: str) -> Any:
    tokens = _split_pointer(pointer)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, pointer)
    token = tokens[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"path not found: {pointer!r}")
        return parent[token]
    if isinstance(parent, list):
        return parent[_index(parent, token, pointer)]
    raise PatchError(f"path not found: {pointer!r}")


def _remove(doc: Any, pointer: str) -> Any:
    tokens = _split_pointer(pointer)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens, pointer)
    token = tokens[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"path not found: {pointer!r}")
        return parent.pop(token)
    if isinstance(parent, list):
        return parent.pop(_index(parent, token, pointer))
    raise PatchError(f"path not found: {pointer!r}")


def _add(doc: Any, pointer: str, value: Any) -> Any:
    tokens = _split_pointer(pointer)
    if not tokens:
        return value
    parent = _parent(doc, tokens, pointer)
    token = tokens[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, pointer, allow_end=True), value)
    else:
        raise PatchError(f"path not found: {pointer!r}")
    return doc


def apply_json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 with all six operations; raises :class:`PatchTestFailedError` on a failed test."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, Mapping) or "op" not in operation or "path" not in operation:
            raise PatchError(f"invalid JSON patch operation: {operation!r}")
        op = operation["op"]
        path = operation["path"]
        if op == "test":
            try:
                actual = _get(doc, path)
            except PatchError as exc:
                raise PatchTestFailedError(f"test failed: {path!r} is missing") from exc
            if actual != operation.get("value"):
                raise PatchTestFailedError(
                    f"test failed: {path!r} is {actual!r}, not {operation.get('value')!r}"
                )
        elif op == "add":
            doc = _add(doc, path, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            _remove(doc, path)
        elif op == "replace":
            _get(doc, path)  # must exist
            if _split_pointer(path):
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(operation.get("value")))
        elif op == "move":
            source = operation.get("from")
            if not isinstance(source, str):
                raise PatchError("a move needs 'from'")
            value = _remove(doc, source)
            doc = _add(doc, path, value)
        elif op == "copy":
            source = operation.get("from")
            if not isinstance(source, str):
                raise PatchError("a copy needs 'from'")
            doc = _add(doc, path, copy.deepcopy(_get(doc, source)))
        else:
            raise PatchError(f"unknown JSON patch operation {op!r}")
    return doc

"""JSON merge patch (RFC 7386), JSON patch (RFC 6902), and a strategic-merge approximation."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = [
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


def apply_strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge, approximated as a JSON merge patch without the directives.

    The resources of this project (Nodes' labels/annotations/status, ConfigMaps,
    Namespaces) have no merge-keyed lists where the difference would matter.
    """
    return apply_merge_patch(target, _strip_directives(patch))


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

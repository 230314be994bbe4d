"""Label and field selectors, parsed the way kube-apiserver parses them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FieldSelector", "LabelSelector", "SelectorError"]


class SelectorError(ValueError):
    """An unparsable selector: the API answers 400 BadRequest."""


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=|>|<)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced parentheses in {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise SelectorError(f"unbalanced parentheses in {text!r}")
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        # Numeric comparisons ("gt"/"lt"): the label must exist and be an integer.
        if not present or value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        limit = int(self.values[0])
        return number > limit if self.op == ">" else number < limit


@dataclass(frozen=True)
class LabelSelector:
    """A parsed ``labelSelector`` query: all requirements must match (AND)."""

    requirements: tuple[_Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if text is None or not text.strip():
            return cls()
        requirements: list[_Requirement] = []
        for part in _split_top_level(text):
            if not part.strip():
                raise SelectorError(f"empty requirement in label selector {text!r}")
            if match := _SET_RE.match(part):
                key, op, raw_values = match.groups()
                values = tuple(v.strip() for v in raw_values.split(",") if v.strip())
                if not values:
                    raise SelectorError(f"empty value set in {part!r}")
                requirements.append(_Requirement(key, op, values))
            elif match := _CMP_RE.match(part):
                key, op, value = match.groups()
                if op in (">", "<"):
                    try:
                        int(value)
                    except ValueError as exc:
                        raise SelectorError(f"not an integer in {part!r}") from exc
                requirements.append(_Requirement(key, "=" if op == "==" else op, (value,)))
            elif match := _EXISTS_RE.match(part):
                bang, key = match.groups()
                requirements.append(_Requirement(key, "!" if bang else "exists"))
            else:
                raise SelectorError(f"unable to parse requirement {part!r}")
        return cls(tuple(requirements))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(req.matches(labels) for req in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


@dataclass(frozen=True)
class FieldSelector:
    """A parsed ``fieldSelector``: ``path=value``, ``path==value``, ``path!=value`` terms.

    The real API server accepts only a few fields per resource (``metadata.name``,
    ``metadata.namespace`` everywhere, plus e.g. ``involvedObject.*`` for events);
    the emulator accepts any dotted path into the object and compares as strings.
    """

    terms: tuple[tuple[str, bool, str], ...] = ()  # (path, equal?, value)

    @classmethod
    def parse(cls, text: str | None) -> FieldSelector:
        if text is None or not text.strip():
            return cls()
        terms: list[tuple[str, bool, str]] = []
        for part in text.split(","):
            if "!=" in part:
                path, value = part.split("!=", 1)
                equal = False
            elif "==" in part:
                path, value = part.split("==", 1)
                equal = True
            elif "=" in part:
                path, value = part.split("=", 1)
                equal = True
            else:
                raise SelectorError(f"invalid field selector term {part!r}")
            if not path.strip():
                raise SelectorError(f"invalid field selector term {part!r}")
            terms.append((path.strip(), equal, value.strip()))
        return cls(tuple(terms))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for path, equal, value in self.terms:
            actual = _lookup(obj, path)
            if (actual == value) != equal:
                return False
        return True

    def exact_name(self) -> str | None:
        for path, equal, value in self.terms:
            if path == "metadata.name" and equal:
                return value
        return None

    def __bool__(self) -> bool:
        return bool(self.terms)


def _lookup(obj: Mapping[str, Any], path: str) -> str:
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)

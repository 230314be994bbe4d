"""Settings models -> command line and environment: every field is a flag and a variable.

A field declares its flag and environment variable in `json_schema_extra`; its
docstring (pydantic `use_attribute_docstrings`) is the `--help` text. Precedence:
flag, then environment variable, then the field's default.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class SettingsError(Exception):
    """Bad flags or environment; the message is ready for the user."""


def field_meta(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        out[name] = {
            "flag": extra.get("flag", "--" + name.replace("_", "-")),
            "env": extra.get("env"),
            "help": (info.description or "").strip(),
            "bool": info.annotation is bool,
        }
    return out


def parse_settings(
    model: type[M],
    argv: Sequence[str],
    *,
    prog: str,
    description: str,
    environ: Mapping[str, str] | None = None,
) -> M:
    env = os.environ if environ is None else environ
    meta = field_meta(model)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for name, m in meta.items():
        default = model.model_fields[name].default
        shown = "" if default is None else f" (default: {default})"
        env_help = f" [env {m['env']}]" if m["env"] else ""
        if m["bool"]:
            parser.add_argument(
                m["flag"],
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=m["help"] + shown + env_help,
            )
        else:
            parser.add_argument(
                m["flag"], dest=name, default=None, help=m["help"] + shown + env_help
            )
    try:
        ns = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse already printed its message
        if exc.code == 0:
            raise
        raise SettingsError("invalid command line") from None
    values: dict[str, Any] = {}
    for name, m in meta.items():
        value = getattr(ns, name)
        if value is None and m["env"] and env.get(m["env"]) not in (None, ""):
            value = env[m["env"]]
        if value is not None:
            values[name] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            where = meta.get(name, {})
            label = where.get("flag", name)
            if where.get("env"):
                label += f" / {where['env']}"
            lines.append(f"{label}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


def fail(prog: str, error: Exception) -> int:
    print(f"{prog}: {error}", file=sys.stderr)
    return 2

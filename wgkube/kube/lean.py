"""kubernetes-asyncio without its 860 generated modules, unless something asks for them.

Importing `kubernetes_asyncio` runs package `__init__`s that import every generated API
class and model (~860 modules, ~1.2 s and ~40 MB here; ~65 s in the emulated VM of the
kernel suite), plus its dynamic client and jsonschema. wg-kube uses four names: the
Configuration, the ApiClient (with `_preload_content=False`, so no model is ever built),
CoreV1Api and ApiException, and the kubeconfig loader; Kopf two models.

`install()` registers those packages as *deferred*: the package object exists (with its
real `__path__`, so submodules import one by one), but its `__init__` runs only when a
name is asked for that is neither a submodule nor one of the names below. Then the real
`__init__` runs in place, exactly as a normal import would have: code that wants
`client.V1Node` or `kubernetes_asyncio.watch` gets it. Nothing of kubernetes-asyncio is
changed; a package that is already imported is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

SHORTCUTS: dict[str, dict[str, str]] = {
    "kubernetes_asyncio": {},
    "kubernetes_asyncio.client": {
        "ApiClient": "api_client",
        "Configuration": "configuration",
        "ApiException": "exceptions",
        "CoreV1Api": "api.core_v1_api",
        # Kopf's optional support of kubernetes-asyncio's objects (kopf._cogs.helpers.thirdparty)
        "V1ObjectMeta": "models.v1_object_meta",
        "V1OwnerReference": "models.v1_owner_reference",
    },
    "kubernetes_asyncio.client.api": {"CoreV1Api": "core_v1_api"},
    "kubernetes_asyncio.client.models": {},
}
"""Each deferred package, and the names it can give without running its `__init__`:
name -> the submodule (relative) that defines it."""

_lock = threading.RLock()


def install() -> None:
    """Defer the packages in SHORTCUTS that are not imported yet (parents first)."""
    with _lock:
        for name, shortcuts in SHORTCUTS.items():
            if name not in sys.modules:
                _defer(name, shortcuts)


def _defer(name: str, shortcuts: dict[str, str]) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed as a package: a normal import reports it
    module = importlib.util.module_from_spec(spec)
    completed = False

    def complete() -> None:
        nonlocal completed
        with _lock:
            if not completed:
                completed = True
                del module.__getattr__
                assert spec.loader is not None
                spec.loader.exec_module(module)

    def getattr_(attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        target = shortcuts.get(attribute)
        if target is not None:
            return getattr(importlib.import_module(f"{name}.{target}"), attribute)
        if importlib.util.find_spec(f"{name}.{attribute}") is not None:
            return importlib.import_module(f"{name}.{attribute}")
        complete()
        return getattr(module, attribute)

    module.__getattr__ = getattr_  # type: ignore[method-assign]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def deferred(name: str) -> bool:
    """Whether package `name` is still deferred (its `__init__` has not run)."""
    module: ModuleType | None = sys.modules.get(name)
    return module is not None and "__getattr__" in vars(module)

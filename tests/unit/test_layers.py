"""The pure core (domain, desired, diff) never imports I/O libraries: two checks, one by tool."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import wgkube

PACKAGE = Path(wgkube.__file__).parent
REPO = PACKAGE.parent
CORE = ("domain", "desired", "diff")
FORBIDDEN = (
    "kopf",
    "pyroute2",
    "kubernetes_asyncio",
    "aiohttp",
    "wgkube.kernel",
    "wgkube.kube",
    "wgkube.operator",
    "wgkube.spoke_agent",
    "wgkube.reconcile",
)


def test_import_linter_keeps_every_contract() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The pure core never imports I/O libraries KEPT" in result.stdout
    assert "Layers KEPT" in result.stdout
    assert " 0 broken" in result.stdout


def imported_modules(source: str, package: str) -> set[str]:
    """Every module named by an import anywhere in `source` (of `package`), relative resolved."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", ""))
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def is_forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def core_modules() -> dict[str, tuple[str, Path]]:
    """Module name -> (its package, its file) for every module of the core."""
    modules = {}
    for layer in CORE:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            package = ".".join(path.parent.relative_to(REPO).parts)
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = (package, path)
    return modules


def test_the_import_walker_catches_every_form_of_a_forbidden_import() -> None:
    source = "\n".join(
        [
            "import pyroute2",
            "from kopf import on",
            "import kubernetes_asyncio.client as k",
            "def f():",
            "    import aiohttp",
            "    from ..kernel import memory",
            "    importlib.import_module('wgkube.kube.client')",
            "from typing import TYPE_CHECKING",
            "if TYPE_CHECKING:",
            "    from wgkube.operator import main",
        ]
    )
    found = {name for name in imported_modules(source, "wgkube.diff") if is_forbidden(name)}
    assert {
        "pyroute2",
        "kopf",
        "kubernetes_asyncio.client",
        "aiohttp",
        "wgkube.kernel",
        "wgkube.kube.client",
        "wgkube.operator",
    } <= found
    assert not is_forbidden("wgkube.kernelish")
    assert not is_forbidden("wgkube.domain.keys")


def test_no_core_module_imports_an_io_library_or_an_outer_layer() -> None:
    modules = core_modules()
    assert len(modules) > 5, f"the walker found only {sorted(modules)}"
    offences = {
        name: sorted(i for i in imported_modules(path.read_text(), pkg) if is_forbidden(i))
        for name, (pkg, path) in modules.items()
    }
    assert {name: bad for name, bad in offences.items() if bad} == {}
    # The walker really reads imports: the core does import itself and the standard library.
    everything = set().union(*(imported_modules(p.read_text(), pkg) for pkg, p in modules.values()))
    assert {"wgkube.domain.keys", "ipaddress"} <= everything

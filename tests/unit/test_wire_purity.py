"""proxy/wire/ is sans-IO: no event loop, sockets, clocks, logging or metrics.

Every .py file under proxy/wire is parsed with ``ast`` and its imports are
checked, following imports of other proxy modules; a fresh interpreter then
confirms that importing the package loads none of those modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WIRE = ROOT / "proxy" / "wire"
FORBIDDEN = ("asyncio", "socket", "time", "logging", "prometheus_client", "proxy.metrics")
# Dynamic imports would hide a forbidden one from this check.
FORBIDDEN_DYNAMIC = ("importlib",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name an import statement in ``source`` may load.

    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule);
    relative imports are resolved against ``module``.
    """
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            names.add(parent)
            names.update(f"{parent}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            names.add("importlib")  # counts as a dynamic import
    return names


def forbidden_root(name: str) -> str | None:
    """The forbidden module ``name`` is or lies inside, if any."""
    for f in FORBIDDEN + FORBIDDEN_DYNAMIC:
        if name == f or name.startswith(f + "."):
            return f
    return None


def module_file(name: str) -> Path | None:
    """The source file of a proxy module, or None for anything else."""
    if name != "proxy" and not name.startswith("proxy."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def forbidden_imports(start: list[Path]) -> dict[str, set[str]]:
    """{module: forbidden names it imports}, following imports of proxy modules."""
    found: dict[str, set[str]] = {}
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        module = module_name(path)
        names = imported_modules(path.read_text(), module, path.name == "__init__.py")
        bad = {root for n in names if (root := forbidden_root(n)) is not None}
        if bad:
            found[module] = bad
        for name in names:
            target = module_file(name)
            if target is not None:
                todo.append(target)
    return found


WIRE_FILES = sorted(WIRE.rglob("*.py"))


def test_the_wire_package_has_the_expected_files() -> None:
    names = {module_name(p) for p in WIRE_FILES}
    assert {
        "proxy.wire",
        "proxy.wire.pg",
        "proxy.wire.pg._backend",
        "proxy.wire.pg._frontend",
        "proxy.wire.pg._tracker",
        "proxy.wire.pg._messages",
        "proxy.wire.pg._auth",
        "proxy.wire.pg._events",
        "proxy.wire.pg._errors",
    } <= names


@pytest.mark.parametrize("path", WIRE_FILES, ids=[module_name(p) for p in WIRE_FILES])
def test_wire_module_imports_nothing_forbidden(path: Path) -> None:
    assert forbidden_imports([path]) == {}


def test_importing_the_wire_package_loads_nothing_forbidden() -> None:
    # A fresh interpreter: what importing proxy.wire adds to sys.modules
    # (``time`` is built in and loaded at start-up, so only additions count).
    code = (
        "import sys; before = set(sys.modules); "
        "import proxy.wire, proxy.wire.pg, proxy.wire.pg._auth; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "proxy.wire.pg._tracker" in out
    assert [m for m in out if forbidden_root(m)] == []


# ----------------------------------------------------------------------- the checker itself


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import asyncio", "proxy.wire.pg._x", {"asyncio"}),
        ("import time as t", "proxy.wire.pg._x", {"time"}),
        ("from time import monotonic", "proxy.wire.pg._x", {"time"}),
        ("import logging.handlers", "proxy.wire.pg._x", {"logging"}),
        ("from socket import socket", "proxy.wire.pg._x", {"socket"}),
        ("import prometheus_client", "proxy.wire.pg._x", {"prometheus_client"}),
        ("from proxy import metrics", "proxy.wire.pg._x", {"proxy.metrics"}),
        ("from proxy.metrics import X", "proxy.wire.pg._x", {"proxy.metrics"}),
        ("from ... import metrics", "proxy.wire.pg._x", {"proxy.metrics"}),
        ("from ...metrics import X", "proxy.wire.pg._x", {"proxy.metrics"}),
        ("def f():\n    import asyncio", "proxy.wire.pg._x", {"asyncio"}),
        ("import importlib", "proxy.wire.pg._x", {"importlib"}),
        ("m = __import__('socket')", "proxy.wire.pg._x", {"importlib"}),
        ("import timeit, socketserver, asyncpg", "proxy.wire.pg._x", set()),
        ("from struct import pack\nfrom . import _errors", "proxy.wire.pg._x", set()),
    ],
)
def test_checker_sees_every_import_form(source: str, module: str, expected: set[str]) -> None:
    names = imported_modules(source, module, is_package=False)
    assert {root for n in names if (root := forbidden_root(n)) is not None} == expected


def test_checker_follows_imports_of_other_proxy_modules() -> None:
    # A wire module importing another proxy module is judged by what that
    # module imports in turn: the recorder reads the clock, so it is caught.
    names = imported_modules("from proxy.mirror import unit", "proxy.wire.pg._x", False)
    assert {"proxy.mirror", "proxy.mirror.unit"} <= names
    assert module_file("proxy.mirror.unit") == ROOT / "proxy" / "mirror" / "unit.py"
    assert module_file("proxy.mirror") == ROOT / "proxy" / "mirror" / "__init__.py"
    assert module_file("asyncio") is None
    recorder = ROOT / "proxy" / "mirror" / "recorder.py"
    assert forbidden_imports([recorder])["proxy.mirror.recorder"] == {"time"}

"""The package layout: imports only point downwards, no import cycle, no oversized module.

Every ``import`` of every capslib module counts, including those inside functions (a lazy import
hides a cycle from Python, not from a reader).
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "capslib"
#: Each layer and the layers it may import (besides itself). The top-level modules (``capslib``, the CLI)
#: may import everything.
LAYERS = {
    "engine": set(),
    "pruning": {"engine"},
    "experiments": {"engine", "pruning"},
    "book": {"engine", "pruning", "experiments"},
}
MAX_LINES = 700


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=1)
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """capslib modules that module ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import module" imports the module; "from module import name" the module itself
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


@lru_cache(maxsize=1)
def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_the_graph_sees_known_edges():
    """The parser itself: relative, absolute and lazy imports of a few modules are found."""
    g = _graph()
    assert "capslib.engine.config" in g["capslib.engine.model"]                 # from .config import ...
    assert "capslib.engine.model" in g["capslib"]                                # from .engine.model import ...
    assert "capslib.experiments.cache" in g["capslib.book.runner"]               # lazy, inside a function
    assert "capslib.book.chapters.chip" in g["capslib.book.chapters.kernels"]    # from .chip import ...


def test_imports_point_downwards():
    bad = []
    for name, deps in _graph().items():
        layer = _layer(name)
        if layer is None:
            continue
        allowed = LAYERS[layer] | {layer}
        bad += [f"{name} -> {d}" for d in sorted(deps) if (_layer(d) or "top") not in allowed]
    assert not bad, "imports that point upwards or sideways:\n" + "\n".join(bad)


def test_no_import_cycle():
    g = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(g[n]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_size(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"

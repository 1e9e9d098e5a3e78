"""Arrows point down: schemas, storage and errors import no stage code; stage code imports no flow code; no cycles.

Layers, top to bottom: `diffpipe.flows` (CLI, Prefect flow, plan, cache keys) -> `diffpipe.tasks` (stages,
domains, methods) -> `diffpipe.storage` -> `diffpipe.schemas` -> `diffpipe.errors`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from diffpipe.flows.cache import PACKAGE_DIR

LAYERS = ("diffpipe.errors", "diffpipe.schemas", "diffpipe.storage", "diffpipe.tasks", "diffpipe.flows")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """diffpipe modules or packages imported by a file (only at module level with `top_level_only`)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("diffpipe")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("diffpipe"):
                submodules = {f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")}
                out |= submodules if len(submodules) == len(node.names) else {base}
    return out


def _is_module(name: str) -> bool:
    path = PACKAGE_DIR.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _layer(module: str) -> int:
    return next((i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")), -1)


FILES = sorted(PACKAGE_DIR.rglob("*.py"))


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{_module_name(f)} imports {m}" for f in FILES for m in _imports(f, top_level_only=False)
              if _layer(m) > _layer(_module_name(f)) >= 0]
    assert not upward


def test_no_import_cycles_at_module_level() -> None:
    graph = {_module_name(f): {m for m in _imports(f, top_level_only=True)} for f in FILES}
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in graph.get(module, ()):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]) if nxt in path else nxt)
            elif nxt in graph and nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles

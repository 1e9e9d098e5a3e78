"""Cache keys: sha256 of the canonical JSON of everything a stage's result depends on.

key = sha256(stage spec after defaults, without its name and reference fields
             + digests of the upstream artifacts it reads (the data artifact is the data fingerprint)
             + the model spec when the stage builds a network
             + runtime facts that change results (seed, device class, precision)
             + code version of the modules the stage executes
             + versions of the libraries whose numerics the node depends on (torch, diffusers, numpy and the
               data domain's own: scikit-learn, ase, fair, ...)
             + diffpipe version)

The code version covers the modules a node executes, not the whole package. Its roots are the stage's
module, its data domain's module, and the module of every implementation its spec names: the objective,
algorithm or method, every reward and search method, and the model arch of a stage that runs a network
(`Node.modules` in plan.py, from `StageBase.implementations`, each name looked up in the registry). From
the roots it follows `import` statements (module level and inside functions) to every diffpipe module
they name, transitively, and hashes the sorted (module, sha256 of its source) pairs. Stages reach
methods by name through the registry, never by import, so a digits pretrain stage covers the digits
domain, the pretrain loop, the flow-matching loss and the UNet builder, and not the masked-diffusion
sampler or the atom transformer. Left out: `diffpipe.schemas` (option values reach the key through the
spec dump), `diffpipe.errors`, `diffpipe.flows` (orchestration) and `diffpipe.tasks.registry` (a table
of names; which modules run is decided by the names in the spec). Package `__init__` modules count only
when named by an import. The data store's own format versions (e.g. CEI_BUILDER_VERSION) are in the
data spec's builder code.
"""

from __future__ import annotations

import ast
import hashlib
import json
import threading
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import diffpipe
from diffpipe.schemas import ArtifactRef, PipelineSpec, StageBase
from diffpipe.tasks.context import resolve_device, resolve_precision

PACKAGE_DIR = Path(diffpipe.__file__).parent

EXCLUDED_FROM_CODE_VERSION = ("diffpipe.schemas", "diffpipe.errors", "diffpipe.flows", "diffpipe.tasks.registry")
"""Schema effects reach keys through the spec dump; flows orchestrate; the registry only maps names to modules."""


CORE_LIBRARIES = ("torch", "diffusers", "numpy")
"""Libraries whose numerics every node depends on."""

DOMAIN_LIBRARIES = {
    "digits": ("scikit-learn",),
    "coulomb_explosion": ("ase", "scipy"),
    "climate": ("fair", "xarray", "scipy"),
    "rna_design": ("viennarna",),
    "energy": ("scipy", "xarray"),
}
"""Data kind -> the further libraries its data, networks and metrics compute with."""


def library_versions(data_kind: str) -> dict[str, str]:
    """Installed versions of the libraries a node of data kind `data_kind` computes with (read, not imported)."""
    out = {}
    for name in (*CORE_LIBRARIES, *DOMAIN_LIBRARIES.get(data_kind, ())):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    """Hex sha256 of a string."""
    return hashlib.sha256(text.encode()).hexdigest()


@cache
def code_modules(roots: tuple[str, ...], package_dir: Path = PACKAGE_DIR) -> tuple[tuple[str, str], ...]:
    """Sorted (module, sha256 of its source) of `roots` and every diffpipe module they import, transitively.

    Found on disk under `package_dir` without importing anything.
    """
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name.startswith(EXCLUDED_FROM_CODE_VERSION):
            continue
        path = _source_file(name, package_dir)
        if path is None:
            continue  # `from pkg.module import name` where name is not a module
        source = path.read_text(encoding="utf-8")
        seen[name] = sha256_text(source)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo.extend(_diffpipe_imports(source, package))
    return tuple(sorted(seen.items()))


def code_version(roots: tuple[str, ...], package_dir: Path = PACKAGE_DIR) -> str:
    """Hash of the source of `roots` and of every diffpipe module they import (see the module docstring)."""
    return sha256_text(canonical_json(code_modules(tuple(sorted(set(roots))), package_dir)))


def _source_file(module: str, package_dir: Path) -> Path | None:
    """The source file of diffpipe module `module`, found on disk without importing its packages."""
    base = package_dir.joinpath(*module.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


_PARSE_LOCK = threading.Lock()


def _parse(source: str) -> ast.Module:
    """`ast.parse(source)`, one thread at a time, retried once on CPython 3.11's spurious SystemError.

    Keys are computed while other stages run in threads; CPython before 3.12 keeps the AST constructor's
    recursion depth in interpreter-wide state, and a parse that overlaps another thread's can fail with
    "AST constructor recursion depth mismatch" (python/cpython#106905). The state is reset at the start of
    every parse, so a second attempt succeeds.
    """
    with _PARSE_LOCK:
        try:
            return ast.parse(source)
        except SystemError as error:
            if "recursion depth mismatch" not in str(error):
                raise
            return ast.parse(source)


@cache
def _diffpipe_imports(source: str, package: str) -> tuple[str, ...]:
    """Modules named by the diffpipe imports of `source` (a module of `package`), except type-checking-only ones."""
    out = []
    for node in _executed_nodes(_parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("diffpipe")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("diffpipe"):
                out.append(base)
                out += [f"{base}.{a.name}" for a in node.names]
    return tuple(out)


def _executed_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` outside `if TYPE_CHECKING:` blocks (imports there never run)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo += node.orelse
            continue
        out.append(node)
        todo += ast.iter_child_nodes(node)
    return out


def key_inputs(
    pipeline: PipelineSpec, stage: StageBase | None, modules: tuple[str, ...], upstream: dict[str, ArtifactRef]
) -> dict[str, Any]:
    """Everything that determines a node's result, as a JSON-able dict (stage None: the data node)."""
    runtime = pipeline.runtime
    inputs: dict[str, Any] = {
        "upstream": {name: ref.sha256 for name, ref in sorted(upstream.items())},
        "runtime": {"seed": runtime.seed, "device": resolve_device(runtime).type,
                    "precision": resolve_precision(runtime)},
        "code": code_version(modules),
        "libraries": library_versions(pipeline.data.kind),
        "diffpipe": diffpipe.__version__,
    }
    if stage is None:
        inputs["spec"] = pipeline.data.model_dump(mode="json")
        return inputs
    skip = {"name", *stage.references}
    inputs["spec"] = stage.model_dump(mode="json", exclude=skip)
    if stage.builds_model:
        inputs["model"] = pipeline.model.model_dump(mode="json")
    return inputs


def cache_key(inputs: dict[str, Any]) -> str:
    """The cache key of a node from its key inputs."""
    return sha256_text(canonical_json(inputs))


def explain_change(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two key-input dicts (why a stage is stale)."""
    reasons = []
    for k in sorted(set(old) | set(new)):
        a, b, path = old.get(k), new.get(k), f"{prefix}{k}"
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            reasons += explain_change(a, b, path + ".")
        elif path == "libraries":
            reasons.append("library versions were not part of its key before")
        elif path == "code":
            reasons.append("code changed")
        elif path.startswith("libraries."):
            reasons.append(f"library {path[10:]} changed: {a or 'absent'} -> {b or 'absent'}")
        elif path.startswith("upstream."):
            reasons.append(f"input '{path[9:]}' changed")
        else:
            reasons.append(f"{path}: {_fmt(a)} -> {_fmt(b)}")
    return reasons


def _fmt(v: Any) -> str:
    return "unset" if v is None else json.dumps(v, default=str)

"""Sweeps: a grid of field values (times seeds) over one spec, every cell its own pipeline, one parent flow.

Every cell is validated before anything runs (an error names the cell and the field). All cells run in
one graph (graph.py) under one Prefect flow run: a stage that several cells share (same cache key, e.g.
the pretrain under four RL algorithms) is one task, and across processes the store's lease makes sure it
is computed once. The comparison (comparison.py) is published to the store and to the Prefect UI.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from prefect import flow

from diffpipe.errors import InputError, SpecError
from diffpipe.schemas import PipelineSpec, SweepSpec
from diffpipe.storage import ArtifactStore

from .spec_loading import apply_override, read_spec_file, set_field, validate_spec

SEED_PATH = "runtime.seed"


@dataclass
class Cell:
    """One pipeline of a sweep: its grid values (and seed), a label, and the validated spec."""

    name: str
    """`c00`, `c01`, ...: the cell's place in the grid (seeds innermost)."""
    params: dict[str, Any]
    """Grid path -> value, without the seed."""
    seed: int
    spec: PipelineSpec

    @property
    def label(self) -> str:
        """`lr=0.001,algorithm=awm,seed=1`: the grid values by the last part of their path."""
        return ",".join([f"{_short(p)}={_fmt(v)}" for p, v in self.params.items()] + [f"seed={self.seed}"])


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`--grid PATH=[v1,v2]` options (YAML lists) as a dict; a bad option is an InputError naming it."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--grid {item}", "a grid axis needs '='", "PATH=[v1,v2,...]", repr(item))
        path, text = item.split("=", 1)
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(f"--grid {path}", "the values are not valid YAML", "a list [v1, v2, ...]",
                             repr(text)) from e
        if not isinstance(values, list):
            raise InputError(f"--grid {path}", "the values must be a list", "[v1, v2, ...]", repr(text))
        if not values:
            raise InputError(f"--grid {path}", "empty grid axis: nothing to run", "at least one value", "[]")
        grid[path] = values
    return grid


def load_sweep(spec_path: str | Path, overrides: list[str] | None = None, grid: list[str] | None = None,
               repeat_seeds: int | None = None) -> tuple[PipelineSpec, SweepSpec, list[Cell]]:
    """The base spec, the sweep (its `sweep:` block with `--grid` / `--repeat-seeds` on top) and every cell.

    Raises InputError (exit 2) naming the cell and the field when any cell does not validate, when the grid
    is empty, or when two cells collide on the artifact root; nothing has run then.
    """
    raw = read_spec_file(spec_path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    block = raw.pop("sweep", None) or {}
    if not isinstance(block, dict):
        raise SpecError("sweep", "the sweep block must be a mapping", "keys grid, repeat_seeds, metrics",
                        type(block).__name__)
    block = {**block, "grid": {**(block.get("grid") or {}), **parse_grid(grid or [])}}
    if repeat_seeds is not None:
        block["repeat_seeds"] = repeat_seeds
    base = validate_spec(copy.deepcopy(raw))
    sweep = validate_spec({**copy.deepcopy(raw), "sweep": block}).sweep
    cells = _cells(raw, base, sweep)
    _check_collisions(cells, sweep)
    return base, sweep, cells


def _cells(raw: dict[str, Any], base: PipelineSpec, sweep: SweepSpec) -> list[Cell]:
    axes = list(sweep.grid.items())
    combos = list(itertools.product(*[values for _, values in axes]))
    cells = []
    for i, (combo, offset) in enumerate(itertools.product(combos, range(sweep.repeat_seeds))):
        params = {path: value for (path, _), value in zip(axes, combo, strict=True)}
        seed = params.pop(SEED_PATH, base.runtime.seed + offset)
        cell_raw = copy.deepcopy(raw)
        cell = Cell(f"c{i:02d}", params, seed, base)
        try:
            for path, value in params.items():
                set_field(cell_raw, path, copy.deepcopy(value))
            set_field(cell_raw, SEED_PATH, seed)
            cell_raw["name"] = f"{base.name}.{cell.name}"  # each cell keeps its own `status` history
            cell.spec = validate_spec(cell_raw)
        except SpecError as e:
            raise InputError(f"sweep cell {cell.name} ({cell.label}): {e.where}", e.problem, e.expected,
                             e.found) from None
        cells.append(cell)
    return cells


def _check_collisions(cells: list[Cell], sweep: SweepSpec) -> None:
    """Two cells on one artifact location must differ, and swept roots must not name one location twice."""
    seen: dict[tuple[str, str], Cell] = {}
    for cell in cells:
        location = _location(cell.spec.storage.root)
        body = json.dumps(cell.spec.model_dump(mode="json", exclude={"name"}), sort_keys=True, default=str)
        for key in [(location, body)] + ([(location, "")] if "storage.root" in sweep.grid else []):
            if key in seen:
                other = seen[key]
                raise InputError(f"sweep cell {cell.name} ({cell.label}): storage.root",
                                 f"collides with cell {other.name} ({other.label}) on artifact root {location}",
                                 "cells that differ in some field, on distinct roots when storage.root is swept",
                                 repr(cell.spec.storage.root))
            seen[key] = cell


def _location(root: str) -> str:
    store = ArtifactStore(root)
    path = os.path.abspath(store.root) if store.is_local else store.root
    return f"{store.fs.protocol if isinstance(store.fs.protocol, str) else store.fs.protocol[0]}://{path}"


def _short(path: str) -> str:
    return path.replace("]", "").replace("[", ".").rsplit(".", 1)[-1]


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def run_sweep_cells(base: PipelineSpec, cells: list[Cell], metrics: list[str]) -> dict[str, Any]:
    """Run every cell in one graph inside the current flow; publish and index the comparison; return it.

    The comparison is published even when some cells failed (their rows say which stages did not build);
    GraphFailed is raised afterwards.
    """
    from .comparison import build_report, write_report
    from .graph import GraphFailed, run_graph
    from .node_task import store_of
    from .ui import publish_comparison_artifacts

    for cell in cells:
        store_of(cell.spec).check_writable()
    failure: GraphFailed | None = None
    try:
        summary = run_graph({cell.name: cell.spec for cell in cells})
    except GraphFailed as e:
        failure, summary = e, e.summary
    report = build_report(cells, summary, metrics)
    store = store_of(base)
    with tempfile.TemporaryDirectory(prefix="diffpipe-sweep-") as tmp:
        images = write_report(report, Path(tmp))
        ref = store.publish(Path(tmp), "metrics", {"sweep": sweep_name(base), "cells": [c.name for c in cells],
                                                   "created": datetime.now(UTC).isoformat()})
        publish_comparison_artifacts(sweep_name(base), report, images)
    store.record_sweep(sweep_name(base), {"ref": ref.model_dump(mode="json"), "cells": {
        c.name: {"label": c.label, "pipeline": c.spec.name} for c in cells}})
    report["artifact"] = ref.model_dump(mode="json")
    report["location"] = store.uri(ref)
    if failure is not None:
        raise failure
    return report


def sweep_name(base: PipelineSpec) -> str:
    """The name a sweep's comparison is indexed under: the base pipeline's name."""
    return base.name


@flow(name="diffpipe-sweep", flow_run_name="sweep {spec_path}", log_prints=True, persist_result=True,
      result_serializer="json")
def sweep_flow(spec_path: str, overrides: list[str] | None = None, grid: list[str] | None = None,
               repeat_seeds: int | None = None) -> dict[str, Any]:
    """One parent flow run for every cell of a sweep; returns the comparison."""
    base, sweep, cells = load_sweep(spec_path, overrides, grid, repeat_seeds)
    return run_sweep_cells(base, cells, sweep.metrics)

"""`diffpipe sweep`, and what `status` and `show` print for a spec with a sweep (its `sweep:` block or `--grid`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from diffpipe.errors import InputError


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """`--grid` and `--repeat-seeds`, shared by sweep, status and show."""
    parser.add_argument("--grid", action="append", default=[], metavar="PATH=[V1,V2,...]",
                        help="a grid axis: a field path and the values it takes (repeatable)")
    parser.add_argument("--repeat-seeds", type=int, default=None, metavar="N",
                        help="run every cell with N seeds (runtime.seed, +1, ...)")


def add_sweep_command(sub: argparse._SubParsersAction) -> None:
    """Register `diffpipe sweep SPEC --grid PATH=[...] --repeat-seeds N`."""
    c = sub.add_parser("sweep", help="run a grid of pipelines at once and compare them")
    c.add_argument("spec", type=Path, help="pipeline YAML file (its `sweep:` block is the default grid)")
    add_sweep_arguments(c)
    c.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field of every cell (repeatable)")
    c.add_argument("--json", action="store_true", help="print the comparison as one JSON document")
    c.set_defaults(fn=cmd_sweep)


def is_sweep(args: argparse.Namespace) -> bool:
    """True when the command is about a sweep: `--grid` / `--repeat-seeds` given, or a `sweep:` block."""
    from .spec_loading import read_spec_file

    return bool(args.grid or args.repeat_seeds) or "sweep" in read_spec_file(args.spec)


def _load(args: argparse.Namespace):
    from .checks import check_spec
    from .sweep import load_sweep

    base, sweep, cells = load_sweep(args.spec, args.set, args.grid, args.repeat_seeds)
    for cell in cells:
        try:
            check_spec(cell.spec)
        except InputError as e:
            raise InputError(f"sweep cell {cell.name} ({cell.label}): {e.where}", e.problem, e.expected,
                             e.found) from None
    return base, sweep, cells


def cmd_sweep(args: argparse.Namespace) -> int:
    """Validate every cell, then run them all at once under one parent flow run and print the comparison."""
    from .node_task import store_of

    base, sweep, cells = _load(args)
    for cell in cells:
        store_of(cell.spec).check_writable()
    from .comparison import markdown_table
    from .graph import GraphFailed
    from .pipeline import task_runner
    from .sweep import sweep_flow

    print(f"sweep '{base.name}': {len(cells)} cells", file=sys.stderr)
    try:
        report = sweep_flow.with_options(task_runner=task_runner(base.runtime))(
            spec_path=str(args.spec), overrides=args.set, grid=args.grid, repeat_seeds=args.repeat_seeds)
    except GraphFailed as e:
        for cell in cells:
            for entry in e.summary[cell.name]:
                if entry["state"] in ("failed", "not run"):
                    print(f"{cell.name} ({cell.label}) {entry['name']}: {entry['state']}"
                          f" — {entry.get('error', '')}", file=sys.stderr)
        raise
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(markdown_table(report))
    executed = {e: sum(c["states"].get(e) == "executed" for c in report["cells"]) for e in report["cells"][0]["states"]}
    print("executions per stage: " + ", ".join(f"{k} {v}" for k, v in executed.items()))
    print(f"comparison: {report['location']}")
    return 0


def sweep_status(args: argparse.Namespace) -> int:
    """Per cell and stage: cached / stale / never run, and why."""
    from .node_task import store_of
    from .plan import status

    base, _, cells = _load(args)
    doc = {"sweep": base.name, "cells": []}
    for cell in cells:
        rows = status(cell.spec, store_of(cell.spec))
        doc["cells"].append({"cell": cell.name, "label": cell.label, "stages": [r.as_json() for r in rows]})
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    from .cli import _print_table

    _print_table(["cell", "params", "stage", "state", "cache key", "why"],
                 [[c["cell"], c["label"], s["name"], s["state"], (s["cache_key"] or "-")[:12],
                   "; ".join(s["reasons"]) or "-"] for c in doc["cells"] for s in c["stages"]])
    return 0


def sweep_show(args: argparse.Namespace) -> int:
    """The newest comparison of the sweep (no stage given), or one stage's artifact in every cell."""
    from .node_task import store_of
    from .plan import status

    base, _, cells = _load(args)
    store = store_of(base)
    if args.stage is None:
        record = store.sweep_record(base.name)
        if record is None:
            raise InputError("sweep", "this sweep has no comparison yet", "a finished `diffpipe sweep`",
                             f"nothing under {store.root_uri} for '{base.name}'")
        from diffpipe.schemas import ArtifactRef

        ref = ArtifactRef.model_validate(record["ref"])
        report = json.loads((store.local_path(ref) / "comparison.json").read_text())
        report["location"] = store.uri(ref)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
            return 0
        from .comparison import markdown_table

        print(markdown_table(report))
        print(f"comparison: {report['location']}")
        return 0
    rows: list[dict[str, Any]] = []
    for cell in cells:
        found = {r.name: r for r in status(cell.spec, store_of(cell.spec))}
        if args.stage not in found:
            raise InputError("stage", "no such stage in this pipeline", "one of " + ", ".join(found), repr(args.stage))
        rows.append({"cell": cell.name, "label": cell.label, **found[args.stage].as_json()})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from .cli import _headline, _print_table

    _print_table(["cell", "params", "state", "artifact", "key metrics"],
                 [[r["cell"], r["label"], r["state"], (r["artifact"] or {}).get("sha256", "-")[:12],
                   _headline(r["metrics"])] for r in rows])
    return 0

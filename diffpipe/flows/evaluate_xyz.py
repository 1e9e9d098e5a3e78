"""`diffpipe evaluate SPEC --xyz FOLDER`: score a trained CEI pipeline's checkpoints on your own .xyz molecules.

Events are built from each good file exactly as the pipeline's data set (same displacements, charge
regime, forward model, random rotation, detector resolution); every chosen sample stage's checkpoint
is sampled with that stage's sampler options, and the same metrics as the evaluate stages are
reported, per molecule and overall. Files that do not parse, hold unknown elements or overlapping
atoms are listed by name; the others are still evaluated. Nothing is written to the artifact store.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffpipe.errors import InputError, SpecError

HEADLINE = ("mae_frame_bohr", "mae_kabsch_bohr", "rmsd_bohr", "distance_mae_bohr", "momentum_rel_error",
            "coverage_0.9")


def add_evaluate_command(sub: Any) -> None:
    """Register the `evaluate` subcommand on the CLI's subparsers."""
    c = sub.add_parser("evaluate", help="score trained CEI checkpoints on a folder of .xyz molecules")
    c.add_argument("spec", type=Path, help="pipeline YAML file (already run)")
    c.add_argument("--xyz", type=Path, required=True, help="folder of .xyz files (Angstrom)")
    c.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="sample stage whose checkpoint and sampler to use (repeatable; default: every one)")
    c.add_argument("--events", type=int, default=32, help="displaced geometries (events) per molecule")
    c.add_argument("--out", type=Path, default=None, help="folder for report.json and PNG previews")
    c.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a field")
    c.add_argument("--json", action="store_true", help="print one JSON document")
    c.set_defaults(fn=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate the pipeline's sample stages on the .xyz folder; print (and optionally write) the report."""
    from diffpipe.schemas import SampleStage
    from diffpipe.storage import ArtifactStore
    from diffpipe.tasks.registry import get_domain

    from .cli import _spec
    from .plan import status

    spec = _spec(args)
    if spec.data.kind != "coulomb_explosion":
        raise SpecError("data.kind", "evaluate --xyz needs Coulomb explosion data", "coulomb_explosion",
                        repr(spec.data.kind))
    if args.events < 1:
        raise InputError("--events", "must be at least 1", found=str(args.events))
    store = ArtifactStore(spec.storage.root)
    rows = {r.name: r for r in status(spec, store)}
    stages = {s.name: s for s in spec.stages if isinstance(s, SampleStage)}
    chosen = args.stage or list(stages)
    for name in chosen:
        if name not in stages:
            raise InputError("--stage", "not a sample stage of this pipeline", "one of " + ", ".join(stages),
                             repr(name))
    for node in ["data", *(stages[name].model for name in chosen)]:
        if rows[node].ref is None:
            raise InputError(f"stage {node}", "not built yet; run `diffpipe run` on this spec first",
                             "cached", rows[node].state)
    checkpoints = {name: (stages[name], store.local_path(rows[stages[name].model].ref)) for name in chosen}
    report = get_domain("coulomb_explosion").evaluate_folder(spec, store.local_path(rows["data"].ref), checkpoints,
                                                          args.xyz, args.events, args.out)
    if args.out is not None:
        (args.out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps(report, indent=2, default=float) if args.json else render(report))
    return 0


def render(report: dict[str, Any]) -> str:
    """The report as plain-text tables: overall and per molecule for every stage, then rejected files."""
    lines = [f"{len(report['molecules'])} molecules from {report['folder']}, "
             f"{report['events_per_molecule']} events each"]
    for stage, scores in report["stages"].items():
        lines.append(f"\n{stage} ({scores['scheduler']}, {scores['draws_per_event']} draws per event)")
        lines.append("  " + "  ".join(f"{h:>18}" for h in ("molecule", *HEADLINE)))
        table = {"overall": scores["sample"]["overall"], **scores["sample"]["per_molecule"]}
        for name, values in table.items():
            cells = [f"{values[h]:18.4f}" if h in values else f"{'-':>18}" for h in HEADLINE]
            lines.append("  " + f"{name:>18}  " + "  ".join(cells))
    lines += [f"rejected: {problem}" for problem in report["rejected"]]
    return "\n".join(lines)

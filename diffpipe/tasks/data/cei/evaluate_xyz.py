"""`diffpipe evaluate SPEC --xyz FOLDER`, a command of the CEI domain: score trained checkpoints on your .xyz files.

Events are built from each good file exactly as the pipeline's data set (same displacements, charge
regime, forward model, random rotation, detector resolution); every chosen sample stage's checkpoint
is sampled with that stage's sampler options, and the same metrics as the evaluate stages are
reported, per molecule and overall. Files that do not parse, hold unknown elements or overlapping
atoms are listed by name; the others are still evaluated. Nothing is written to the artifact store.
The CLI finds this module through the registry's `COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffpipe.errors import InputError, SpecError

if TYPE_CHECKING:
    from diffpipe.schemas import PipelineSpec

HEADLINE = ("mae_frame_bohr", "mae_kabsch_bohr", "rmsd_bohr", "distance_mae_bohr", "momentum_rel_error",
            "coverage_0.9")


HELP = "score trained CEI checkpoints on a folder of .xyz molecules"
"""One-line help of the command."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's own options (the CLI adds `spec`, `--set` and `--json`)."""
    parser.add_argument("--xyz", type=Path, required=True, help="folder of .xyz files (Angstrom)")
    parser.add_argument("--stage", action="append", default=[], metavar="NAME",
                        help="sample stage whose checkpoint and sampler to use (repeatable; default: every one)")
    parser.add_argument("--events", type=int, default=32, help="displaced geometries (events) per molecule")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.json and PNG previews")


def run(args: argparse.Namespace, spec: PipelineSpec, artifact: Callable[[str], Path]) -> int:
    """Evaluate the pipeline's sample stages on the .xyz folder; print (and optionally write) the report.

    `artifact(node)` is the local folder of a built node's artifact (InputError when it is not built).
    """
    from diffpipe.schemas import SampleStage
    from diffpipe.tasks.registry import get_domain

    if spec.data.kind != "coulomb_explosion":
        raise SpecError("data.kind", "evaluate --xyz needs Coulomb explosion data", "coulomb_explosion",
                        repr(spec.data.kind))
    if args.events < 1:
        raise InputError("--events", "must be at least 1", found=str(args.events))
    stages = {s.name: s for s in spec.stages if isinstance(s, SampleStage)}
    chosen = args.stage or list(stages)
    for name in chosen:
        if name not in stages:
            raise InputError("--stage", "not a sample stage of this pipeline", "one of " + ", ".join(stages),
                             repr(name))
    data = artifact("data")
    checkpoints = {name: (stages[name], artifact(stages[name].model)) for name in chosen}
    report = get_domain("coulomb_explosion").evaluate_folder(spec, data, checkpoints, args.xyz, args.events, args.out)
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

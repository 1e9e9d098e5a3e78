"""Climate emulation quality: runs a climate pipeline and puts emulator, pattern scaling and UNet side by side.

Run: `python benchmarks/climate_quality.py [--spec pipelines/climate.yaml] [--set key=value ...]`; writes
benchmarks/results/climate_quality.json (or <--out>/<--name>.json; --quick: a smoke run with a few training
steps, to a temp folder). The pipeline runs through the real CLI (`diffpipe run --json`, by the shared
harness) in a fresh artifact root. Besides wall time it records the CPU seconds of the run and the load
average: on a shared machine CPU seconds are the better estimate of the wall time on idle cores.
Scores: ClimateBench NRMSE (spatial, global, total = s + 5 g) and fair CRPS per variable on the held-out
scenario's evaluation window, with the internal-variability floor (one ESM member against the others).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from harness import REPO, open_benchmark, parser, run_diffpipe, set_options, write_result

SCORES = ("nrmse_spatial", "nrmse_global", "nrmse_total", "crps", "spread_skill_ratio")
GPU_HINT = """Full profile (96 x 144 grid, 50 members; on a GPU machine with the CUDA build of torch in .venv):
  python benchmarks/climate_quality.py --spec pipelines/climate_full.yaml --name climate_quality_full"""
QUICK = ["stages.emulator.steps=8", "stages.emulator.checkpoint_every=8", "stages.unet.steps=8",
         "stages.unet.checkpoint_every=8"]
"""--quick: 8 training steps per model, a smoke run (not a measurement)."""


def evaluations(summary: list[dict]) -> dict[str, dict]:
    """Evaluate-stage metrics by which model they score: `emulator` (an ensemble) or `unet` (one member)."""
    out = {}
    for node in summary:
        metrics = node["metrics"]
        if node["stage"] == "evaluate" and "internal_variability_floor" in metrics:
            out["emulator" if metrics["members"] > 1 else "unet"] = metrics
    if set(out) != {"emulator", "unet"}:
        raise SystemExit(f"expected one ensemble and one deterministic evaluation; found {sorted(out)}")
    return out


def side_by_side(evals: dict[str, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """variable -> score -> {emulator, pattern_scaling, unet, floor}."""
    emulator, unet = evals["emulator"], evals["unet"]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for var, scores in emulator["model"].items():
        table[var] = {
            s: {"emulator": scores[s], "pattern_scaling": emulator["pattern_scaling"][var][s],
                "unet": unet["model"][var][s], "floor": emulator["internal_variability_floor"][var].get(s)}
            for s in SCORES
        }
    return table


def goals(table: dict[str, dict[str, dict[str, float]]]) -> dict[str, float | bool]:
    """The issue's two goals: emulator CRPS >= 25% below the UNet's; tas total NRMSE <= pattern scaling's."""
    reduction = {var: 1 - t["crps"]["emulator"] / t["crps"]["unet"] for var, t in table.items()}
    tas = table["tas"]["nrmse_total"]
    return {
        **{f"crps_reduction_vs_unet_{var}": r for var, r in reduction.items()},
        "crps_reduction_vs_unet_mean": sum(reduction.values()) / len(reduction),
        "goal_crps_25pct_below_unet_all_variables": all(r >= 0.25 for r in reduction.values()),
        "tas_nrmse_total_emulator_over_pattern_scaling": tas["emulator"] / tas["pattern_scaling"],
        "goal_tas_nrmse_total_not_worse_than_pattern_scaling": tas["emulator"] <= tas["pattern_scaling"],
    }


def print_table(table: dict[str, dict[str, dict[str, float]]]) -> None:
    """The scores as a fixed-width table."""
    print(f"{'variable':<26}{'score':<20}{'emulator':>10}{'pattern sc.':>12}{'unet':>10}{'floor':>10}")
    for var, scores in table.items():
        for name, row in scores.items():
            floor = "-" if row["floor"] is None else f"{row['floor']:.4g}"
            print(f"{var:<26}{name:<20}{row['emulator']:>10.4g}{row['pattern_scaling']:>12.4g}"
                  f"{row['unet']:>10.4g}{floor:>10}")


def main() -> None:
    """Run the pipeline, write the JSON, print the table and how to run the full profile."""
    options = parser(__doc__)
    options.add_argument("--spec", type=Path, default=REPO / "pipelines" / "climate.yaml")
    options.add_argument("--set", dest="overrides", action="append", default=[], help="spec override key=value")
    options.add_argument("--root", type=Path, default=None, help="artifact root (default: a fresh temp folder)")
    options.add_argument("--name", default="climate_quality", help="results file name (without .json)")
    args = open_benchmark(options.parse_args())
    args.overrides = [*(QUICK if args.quick else []), *args.overrides]
    root = args.root or Path(tempfile.mkdtemp(prefix="climate_quality_"))
    load_before = os.getloadavg()
    done = run_diffpipe(["run", str(args.spec.resolve()), *set_options([f"storage.root={root}", *args.overrides])],
                        Path(tempfile.mkdtemp(prefix="climate_quality_work_")))
    summary, wall, cpu = done.doc["stages"], done.wall_s, done.cpu_s
    evals = evaluations(summary)
    table = side_by_side(evals)
    stages = {n["name"]: {k: v for k, v in n["metrics"].items() if k.endswith(("_wall_s", "steps_per_s"))}
              for n in summary}
    result = {
        "spec": str(args.spec), "overrides": args.overrides, "artifact_root": str(root),
        "test_scenario": evals["emulator"]["test_scenario"], "period": evals["emulator"]["period"],
        "emulator_members": evals["emulator"]["members"], "target_members": evals["emulator"]["target_members"],
        "wall_s": wall, "cpu_s": cpu, "cpu_count": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "stages": stages, "scores": table, "goals": goals(table),
    }
    path = write_result(args.name, result, args.out)
    print_table(table)
    print(json.dumps(result["goals"], indent=2))
    print(f"wall {wall:.0f} s, CPU {cpu:.0f} s on {os.cpu_count()} cores (load before {load_before[0]:.1f}); "
          f"written to {path}")
    print(GPU_HINT)


if __name__ == "__main__":
    main()

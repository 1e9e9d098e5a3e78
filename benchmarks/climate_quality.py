"""Climate emulation quality: runs a climate pipeline and puts emulator, pattern scaling and UNet side by side.

Run: `python benchmarks/climate_quality.py [--spec pipelines/climate.yaml] [--set key=value ...]`; writes
benchmarks/results/climate_quality.json (or --out). The pipeline runs through the real CLI (`diffpipe run
--json`) in a fresh artifact root. Besides wall time it records the CPU seconds of the run and the load
average: on a shared machine CPU seconds are the better estimate of the wall time on idle cores.
Scores: ClimateBench NRMSE (spatial, global, total = s + 5 g) and fair CRPS per variable on the held-out
scenario's evaluation window, with the internal-variability floor (one ESM member against the others).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "climate_quality.json"
SCORES = ("nrmse_spatial", "nrmse_global", "nrmse_total", "crps", "spread_skill_ratio")
GPU_HINT = """Full profile (96 x 144 grid, 50 members; on a GPU machine with the CUDA build of torch in .venv):
  python benchmarks/climate_quality.py --spec pipelines/climate_full.yaml \\
      --out benchmarks/results/climate_quality_full.json"""


def run_pipeline(spec: Path, root: Path, overrides: list[str]) -> tuple[list[dict], float, float]:
    """Run the spec with the CLI; (per-node summary, wall seconds, CPU seconds of the child processes)."""
    command = [str(Path(sys.executable).parent / "diffpipe"), "run", str(spec), "--json",
               "--set", f"storage.root={root}"]
    for assignment in overrides:
        command += ["--set", assignment]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"pipeline failed with exit code {done.returncode}")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return json.loads(done.stdout)["stages"], wall, cpu


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "pipelines" / "climate.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="spec override key=value")
    parser.add_argument("--root", type=Path, default=None, help="artifact root (default: a fresh temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="climate_quality_"))
    load_before = os.getloadavg()
    summary, wall, cpu = run_pipeline(args.spec.resolve(), root, args.overrides)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(table)
    print(json.dumps(result["goals"], indent=2))
    print(f"wall {wall:.0f} s, CPU {cpu:.0f} s on {os.cpu_count()} cores (load before {load_before[0]:.1f}); "
          f"written to {args.out}")
    print(GPU_HINT)


if __name__ == "__main__":
    main()

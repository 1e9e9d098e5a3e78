"""Quality of the CEI pipeline: held-out-molecule MAE (Bohr), RMSD, round-trip error, diffusion model vs baseline.

Runs `diffpipe run pipelines/cei.yaml` (the quick CPU profile) through the shared harness in a fresh
artifact root and reads the two evaluate stages. Reports wall time, the CPU time of the run and the load
average, so a time measured on a shared machine can be extrapolated to idle cores. Writes
benchmarks/results/cei_quality.json (or cei_quality_full.json with --full; --quick: a smoke run with tiny
data and steps, to a temp folder).

Full profile, on a GPU machine (CUDA build of torch in .venv):
    python benchmarks/cei_quality.py --full          # runs pipelines/cei_full.yaml
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from harness import REPO, Finished, open_benchmark, parser, run_diffpipe, set_options, write_result

from diffpipe.schemas import ArtifactRef
from diffpipe.storage import ArtifactStore

HEADLINE = ("mae_frame_bohr", "mae_kabsch_bohr", "rmsd_bohr", "distance_mae_bohr", "momentum_rel_error",
            "coverage_0.9")
EVALUATIONS = {"diffusion": "evaluate_diffusion", "baseline": "evaluate_baseline"}
QUICK = ["stages.diffusion.steps=30", "stages.baseline.steps=30", "stages.diffusion.checkpoint_every=30",
         "stages.baseline.checkpoint_every=30", "data.geometries_per_molecule=4",
         "stages.sample_diffusion.num_samples=40", "stages.sample_baseline.num_samples=40"]
"""--quick: a smoke run (tiny data, 30 training steps), not a measurement."""


def stage_times(root: str, summary: dict) -> dict[str, float]:
    """Wall time of every stage, from its artifact's lineage."""
    store = ArtifactStore(root)
    return {s["name"]: store.manifest(ArtifactRef.model_validate(s["artifact"]).sha256)["lineage"]["wall_time_s"]
            for s in summary["stages"]}


def headline(summary: dict) -> dict[str, dict]:
    """Overall held-out metrics of one draw per event (and of the draws' mean) for model and baseline."""
    by_name = {s["name"]: s["metrics"] for s in summary["stages"]}
    out = {}
    for label, stage in EVALUATIONS.items():
        metrics = by_name[stage]
        out[label] = {h: metrics["sample"]["overall"][h] for h in HEADLINE if h in metrics["sample"]["overall"]}
        if "sample_mean" in metrics:
            out[f"{label}_sample_mean"] = {h: metrics["sample_mean"]["overall"][h] for h in HEADLINE[:5]}
    return out


def report(spec: Path, done: Finished, times: dict[str, float], load_before: tuple[float, ...]) -> dict:
    """The quality numbers of one run, with its wall and CPU time."""
    summary = done.doc
    data = next(s for s in summary["stages"] if s["name"] == "data")["metrics"]
    return {
        "spec": spec.name, "device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_count": os.cpu_count(),
        "wall_s": done.wall_s, "child_cpu_s": done.cpu_s, "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "idle_2_core_estimate_s": {"if_fully_parallel": done.cpu_s / 2, "if_serial": done.cpu_s},
        "stage_wall_s": times, "n_train_events": data["n_train_events"], "n_test_events": data["n_test_events"],
        "test_molecules": data["test_molecules"], "held_out": headline(summary),
    }


def main() -> None:
    """Run the quick (or full) profile and write the quality numbers."""
    options = parser(__doc__)
    options.add_argument("--full", action="store_true", help="run pipelines/cei_full.yaml (meant for a GPU)")
    args = open_benchmark(options.parse_args())
    spec = REPO / "pipelines" / ("cei_full.yaml" if args.full else "cei.yaml")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cei-quality-") as tmp:
        root = str(Path(tmp) / "artifacts")
        overrides = [f"storage.root={root}", *(QUICK if args.quick else [])]
        done = run_diffpipe(["run", str(spec), *set_options(overrides)], Path(tmp) / "work")
        times = stage_times(root, done.doc)
    result = {**report(spec, done, times, load_before), "overrides": overrides[1:]}
    write_result("cei_quality_full" if args.full else "cei_quality", result, args.out)
    if not args.full:
        print("full profile on a GPU: python benchmarks/cei_quality.py --full  (pipelines/cei_full.yaml)")


if __name__ == "__main__":
    main()

"""Quality of the CEI pipeline: held-out-molecule MAE (Bohr), RMSD, round-trip error, diffusion model vs baseline.

Runs `diffpipe run pipelines/cei.yaml` (the quick CPU profile) in a fresh artifact root and reads the two
evaluate stages. Reports wall time, the CPU time of the run and the load average, so a time measured
on a shared machine can be extrapolated to idle cores. Writes benchmarks/results/cei_quality.json
(or cei_quality_full.json with --full).

Full profile, on a GPU machine (CUDA build of torch in .venv):
    python benchmarks/cei_quality.py --full          # runs pipelines/cei_full.yaml
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

import torch

REPO = Path(__file__).resolve().parents[1]
HEADLINE = ("mae_frame_bohr", "mae_kabsch_bohr", "rmsd_bohr", "distance_mae_bohr", "momentum_rel_error",
            "coverage_0.9")
EVALUATIONS = {"diffusion": "evaluate_diffusion", "baseline": "evaluate_baseline"}


def run_pipeline(spec: Path, root: str) -> tuple[dict, float, float]:
    """Run the spec with its artifacts under `root`; the run's JSON summary, wall time and child CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    command = [sys.executable, "-m", "diffpipe.flows.cli", "run", str(spec), "--set", f"storage.root={root}", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"pipeline failed ({result.returncode}):\n{result.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(result.stdout[result.stdout.index("{"):]), wall, cpu


def stage_times(root: str, summary: dict) -> dict[str, float]:
    """Wall time of every stage, from its artifact's lineage."""
    from diffpipe.schemas import ArtifactRef
    from diffpipe.storage import ArtifactStore

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


def main() -> None:
    """Run the quick (or full) profile and write the quality numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run pipelines/cei_full.yaml (meant for a GPU)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = REPO / "pipelines" / ("cei_full.yaml" if args.full else "cei.yaml")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cei-quality-") as root:
        summary, wall, cpu = run_pipeline(spec, root)
        times = stage_times(root, summary)
    data = next(s for s in summary["stages"] if s["name"] == "data")["metrics"]
    results = {
        "spec": spec.name, "device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_count": os.cpu_count(),
        "wall_s": wall, "child_cpu_s": cpu, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "idle_2_core_estimate_s": {"if_fully_parallel": cpu / 2, "if_serial": cpu},
        "stage_wall_s": times, "n_train_events": data["n_train_events"], "n_test_events": data["n_test_events"],
        "test_molecules": data["test_molecules"], "held_out": headline(summary),
    }
    print(json.dumps(results, indent=2))
    if not args.full:
        print("full profile on a GPU: python benchmarks/cei_quality.py --full  (pipelines/cei_full.yaml)")
    out = REPO / "benchmarks" / "results" / ("cei_quality_full.json" if args.full else "cei_quality.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""CHORDS on digits: wall-time speed-up over sequential Euler at equal quality, 2 worker processes.

The digits model of benchmarks/search_digits.py (same spec, same cache) is sampled by a plain sample
stage (FlowMatchEuler, T steps, one process) and by `search: {method: chords, cores: 2}` stages with
several start steps of core 1, all from the same noise (same stage seed), each scored by an evaluate
stage, all through the pipeline's own stage functions (benchmarks/inprocess.py). Reported per seed:
the wall time of the sampling loop (plain: `sampling_wall_s`; CHORDS: `search_wall_s`, which includes
forking the two workers), the speed-up, the latency in network rounds, the mean absolute difference
from the sequential samples, and the Frechet distance of both (equal quality = the difference from
the sequential solve is small against the FD's own noise). The hit is 0 (core 1's finish): on 2
cores hit 1 is core 0, the sequential solve itself.

The machine has 2 cores shared with other work, so wall times are noisy. Usage:
    python benchmarks/chords_digits.py [--seeds 0 1 2] [--steps 50] [--starts 10 17 25]
Writes benchmarks/results/chords_digits.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inprocess import metrics_of, run_in_process  # noqa: E402
from search_digits import environment  # noqa: E402
from search_digits import pipeline as search_pipeline  # noqa: E402

from diffpipe.flows.spec_loading import validate_spec  # noqa: E402
from diffpipe.storage.formats import open_dataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "chords_digits.json"


def pipeline(args: argparse.Namespace) -> dict:
    """The search benchmark's spec (model and pretrain), with plain and CHORDS stages per seed."""
    raw = search_pipeline(argparse.Namespace(seeds=[], budgets=[], steps=args.steps, samples=args.samples,
                                             pretrain_steps=args.pretrain_steps))
    raw["name"] = "chords_digits"
    stages = raw["stages"][:1]
    for seed in args.seeds:
        base = {"stage": "sample", "model": "pretrain", "seed": seed, "num_samples": args.samples,
                "batch_size": args.samples, "scheduler": {"name": "FlowMatchEulerDiscreteScheduler",
                                                          "steps": args.steps}}
        stages.append({**base, "name": f"plain_s{seed}"})
        for start in args.starts:
            stages.append({**base, "name": f"chords{start}_s{seed}",
                           "search": {"method": "chords", "cores": 2, "init_steps": [0, start], "hit": 0}})
    for stage in list(stages[1:]):
        stages.append({"name": f"evaluate_{stage['name']}", "stage": "evaluate", "samples": stage["name"],
                       "metrics": ["domain"]})
    raw["stages"] = stages
    return raw


def samples(store, ref) -> np.ndarray:
    """The x array of a samples artifact."""
    return open_dataset(store.local_path(ref) / "samples.zarr")["x"].values


def main() -> None:
    """Run plain and CHORDS sampling per seed; print and write speed-ups, errors and FDs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--starts", type=int, nargs="+", default=[10, 17, 25])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--pretrain-steps", type=int, default=800)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    spec = validate_spec(pipeline(args))
    store, refs = run_in_process(spec)
    rows = []
    for seed in args.seeds:
        plain = metrics_of(store, refs[f"plain_s{seed}"])
        plain_fd = metrics_of(store, refs[f"evaluate_plain_s{seed}"])["model"]["frechet_distance"]
        reference = samples(store, refs[f"plain_s{seed}"])
        for start in args.starts:
            name = f"chords{start}_s{seed}"
            m = metrics_of(store, refs[name])
            rows.append({"seed": seed, "core1_start": start, "plain_wall_s": plain["sampling_wall_s"],
                         "chords_wall_s": m["search_wall_s"],
                         "wall_speedup": plain["sampling_wall_s"] / m["search_wall_s"],
                         "rounds": m["search_rounds"], "speedup_in_rounds": m["search_speedup_in_rounds"],
                         "nfe_per_sample": m["nfe_per_sample"],
                         "mean_abs_difference_from_sequential": float(np.abs(samples(store, refs[name])
                                                                             - reference).mean()),
                         "frechet_distance": metrics_of(store, refs[f"evaluate_{name}"])["model"]["frechet_distance"],
                         "sequential_frechet_distance": plain_fd})
            r = rows[-1]
            print(f"seed {seed} start {start}: wall {r['plain_wall_s']:.2f} s -> {r['chords_wall_s']:.2f} s "
                  f"({r['wall_speedup']:.2f}x; rounds {r['rounds']} = {r['speedup_in_rounds']:.2f}x), "
                  f"|x - x_seq| {r['mean_abs_difference_from_sequential']:.4f}, FD {r['frechet_distance']:.2f} "
                  f"vs {plain_fd:.2f}", flush=True)
    summary = {}
    for start in args.starts:
        group = [r for r in rows if r["core1_start"] == start]
        summary[str(start)] = {k: {"mean": statistics.fmean(r[k] for r in group),
                                   "std": statistics.stdev(r[k] for r in group) if len(group) > 1 else 0.0}
                               for k in ("wall_speedup", "speedup_in_rounds", "mean_abs_difference_from_sequential",
                                         "frechet_distance", "sequential_frechet_distance")}
    result = {"config": vars(args), "environment": environment(), "summary": summary, "runs": rows,
              "benchmark_wall_s": time.perf_counter() - started}
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {RESULTS} in {result['benchmark_wall_s']:.0f} s")


if __name__ == "__main__":
    main()

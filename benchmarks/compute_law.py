"""A compute law for sampling: wall time (and energy, where measured) against FLOPs, per model family.

Grid per family (digits, 8x8, class-conditional): network size x sampler steps x batch x guidance
(classifier-free guidance doubles the rows of every call). Each configuration is a sample stage run
through the pipeline's own stage functions (benchmarks/inprocess.py) on a checkpoint pretrained for one
step (the weights do not change the cost); its metrics give the FLOPs (torch's FLOP counter on the
first network call x evaluations), the wall time of the sampling loop and the energy counters.
Recorded run: 3 sizes x 2 step counts x 2 batches x 2 guidance settings per family, seed 0 only (the
machine's time ran short; the script's default is 3 seeds). The
FLOP-counted first call is slower than the others, so the fitted time is the loop's time without it,
scaled back to all calls: (sampling_wall_s - flop_count_s) x calls / (calls - 1). Each configuration
runs for 3 seeds; the median time is used.

Fit per family: log t = a + alpha log C, with R^2; across families the Spearman rank correlation of C
and t over every configuration; held out: each family's largest network is predicted from a fit on the
others (median absolute relative error). Energy: this machine exposes no RAPL counters and no GPU, so
only time is fitted; the stages record "not available". One torch thread; a shared 2-core machine.

    python benchmarks/compute_law.py [--seeds 0 1 2]
Writes benchmarks/results/compute_law.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inprocess import metrics_of, run_in_process  # noqa: E402
from search_digits import environment  # noqa: E402

from diffpipe.flows.spec_loading import validate_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "compute_law.json"
CACHE = Path(tempfile.gettempdir()) / "diffpipe_compute_law_cache"
FAMILIES = {
    "unet2d": [{"arch": "unet2d", "block_out_channels": list(c), "norm_num_groups": 8, "layers_per_block": 1}
               for c in ((16, 32), (32, 64), (64, 128))],
    "dit": [{"arch": "dit", "num_layers": n, "num_attention_heads": h, "attention_head_dim": d}
            for n, h, d in ((2, 2, 16), (4, 2, 32), (4, 4, 32))],
}
STEPS, BATCHES, GUIDANCE = (4, 16), (64, 256), (1.0, 2.0)


def spec_for(model: dict, seeds: list[int]) -> dict:
    """Digits with this network: a one-step pretrain and a sample stage per (steps, batch, guidance, seed)."""
    raw = yaml.safe_load((REPO / "pipelines" / "digits.yaml").read_text())
    raw["name"] = "compute_law"
    raw["model"] = model
    raw["stages"][0].update(steps=1, batch_size=8, checkpoint_every=1, warmup_steps=0)
    stages = [raw["stages"][0]]
    for steps in STEPS:
        for batch in BATCHES:
            for guidance in GUIDANCE:
                for seed in seeds:
                    stages.append({"name": f"s{steps}_b{batch}_g{guidance:g}_seed{seed}", "stage": "sample",
                                   "model": "pretrain", "seed": seed, "num_samples": batch, "batch_size": batch,
                                   "guidance_scale": guidance,
                                   "scheduler": {"name": "FlowMatchEulerDiscreteScheduler", "steps": steps}})
    raw["stages"] = stages
    raw["storage"] = {"root": str(CACHE)}
    raw["runtime"] = {"device": "cpu", "seed": 0}
    return raw


def loop_time(m: dict) -> float:
    """Sampling-loop seconds without the FLOP-counted call, scaled back to every call."""
    calls = m["network_calls"]
    return (m["sampling_wall_s"] - m["flop_count_s"]) * calls / (calls - 1)


def fit(flops: np.ndarray, seconds: np.ndarray) -> dict:
    """log t = a + alpha log C by least squares, with R^2."""
    x, y = np.log(flops), np.log(seconds)
    alpha, a = np.polyfit(x, y, 1)
    residual = y - (a + alpha * x)
    return {"alpha": float(alpha), "log_a": float(a), "r2": float(1 - residual.var() / y.var()), "n": len(x)}


def predict(law: dict, flops: np.ndarray) -> np.ndarray:
    """Seconds the law predicts for FLOPs."""
    return np.exp(law["log_a"] + law["alpha"] * np.log(flops))


def main() -> None:
    """Run the grid, fit the law per family, print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, rows = time.perf_counter(), []
    for family, models in FAMILIES.items():
        for size, model in enumerate(models):
            spec = validate_spec(spec_for(model, args.seeds))
            store, refs = run_in_process(spec)
            for key in dict.fromkeys(s.name.rsplit("_seed", 1)[0] for s in spec.stages[1:]):
                runs = [metrics_of(store, refs[f"{key}_seed{seed}"]) for seed in args.seeds]
                steps, batch, guidance = key.split("_")
                rows.append({"family": family, "size": size, "model": model, "steps": int(steps[1:]),
                             "batch": int(batch[1:]), "guidance": float(guidance[1:]),
                             "flops": runs[0]["sampling_flops"],
                             "flops_per_evaluation": runs[0]["flops_per_evaluation"],
                             "seconds": statistics.median(loop_time(m) for m in runs),
                             "raw_seconds": statistics.median(m["sampling_wall_s"] for m in runs),
                             "seconds_spread": max(loop_time(m) for m in runs) - min(loop_time(m) for m in runs),
                             "cpu_energy_j": runs[0]["cpu_energy_j"]})
            print(f"{family} size {size}: {len(rows)} configurations so far", flush=True)
    laws, held_out = {}, {}
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        flops, seconds = np.array([r["flops"] for r in mine]), np.array([r["seconds"] for r in mine])
        laws[family] = {"loop_time": fit(flops, seconds),
                        "raw_wall_time": fit(flops, np.array([r["raw_seconds"] for r in mine]))}
        train = [r for r in mine if r["size"] < max(r["size"] for r in mine)]
        test = [r for r in mine if r not in train]
        law = fit(np.array([r["flops"] for r in train]), np.array([r["seconds"] for r in train]))
        truth = np.array([r["seconds"] for r in test])
        error = np.abs(predict(law, np.array([r["flops"] for r in test])) - truth) / truth
        held_out[family] = {"fit_on_smaller_sizes": law, "median_abs_relative_error": float(np.median(error)),
                            "max_abs_relative_error": float(error.max()), "n_held_out": len(test)}
    rho, p = spearmanr([r["flops"] for r in rows], [r["seconds"] for r in rows])
    cross = {}
    for a in FAMILIES:
        for b in FAMILIES:
            if a != b:
                law = laws[a]["loop_time"]
                other = [r for r in rows if r["family"] == b]
                truth = np.array([r["seconds"] for r in other])
                error = np.abs(predict(law, np.array([r["flops"] for r in other])) - truth) / truth
                cross[f"{a}_law_on_{b}"] = {"median_abs_relative_error": float(np.median(error)),
                                            "spearman": float(spearmanr(predict(law, np.array(
                                                [r["flops"] for r in other])), truth)[0])}
    result = {"config": {"seeds": args.seeds, "steps": STEPS, "batches": BATCHES, "guidance": GUIDANCE,
                         "families": FAMILIES},
              "environment": environment(), "laws": laws, "held_out_largest_size": held_out,
              "rank_correlation_all": {"spearman": float(rho), "p_value": float(p), "n": len(rows)},
              "cross_family": cross, "energy": rows[0]["cpu_energy_j"], "runs": rows,
              "benchmark_wall_s": time.perf_counter() - started}
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("laws", "held_out_largest_size", "rank_correlation_all",
                                             "cross_family", "energy")}, indent=1))
    print(f"wrote {RESULTS} in {result['benchmark_wall_s']:.0f} s")


if __name__ == "__main__":
    main()

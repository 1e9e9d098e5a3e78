"""Inference-time methods on Countdown: held-out accuracy of particle Gibbs, RFG and discrete CFG vs best-of-N.

Three sweeps of the shipped Countdown spec (`pipelines/countdown.yaml`: a tiny masked-diffusion LM
pretrained with prompt dropout `cond_dropout` so classifier-free guidance has an unconditional branch,
the spec's coupled-GRPO `rl` stage as the RL'd policy) through the shared harness, on one artifact root:
the data, pretrain and rl stages are computed once and every later cell finds them cached
(`stage_executions` counts executed and cached cells per stage and sweep). Each cell sets the `search:`
block of one sample stage, scored by the evaluate stage that reads it:

- `sample_pretrained` (the pretrained model): plain greedy block decoding, and discrete_cfg with a
  constant or a smooth schedule, w in --cfg-weights (greedy, deterministic: the first seed only);
- `sample_pretrained` x its `seed`: best_of_n (N completions at temperature 1, the verifier picks) and
  particle_gibbs (N/2 particles x 2 iterations, the verifier's reward as potential) at equal NFE budgets;
- `sample` (the RL'd policy): plain greedy decoding and rfg against the pretrained reference, w in
  --rfg-weights (greedy).

Best-of-N and particle Gibbs use the exact verifier at sampling time (an oracle on held-out prompts: this
measures search, not generalisation). Cells run one stage at a time (`runtime.max_parallel_stages=1`).

    python benchmarks/search_countdown.py [--seeds 0 1 2] [--samples 100]
    python benchmarks/search_countdown.py --quick      # a smoke run of minutes, written to a temp folder
Writes benchmarks/results/search_countdown.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from harness import REPO, SweepRun, open_benchmark, parser, run_sweep, stage_counts, write_result

SPEC = REPO / "pipelines" / "countdown.yaml"
QUICK = ["data.num_train=64", "data.num_test=16", "stages.pretrain.steps=30", "stages.pretrain.checkpoint_every=30",
         "stages.pretrain.warmup_steps=5", "stages.rl.steps=2", "stages.rl.checkpoint_every=2",
         "stages.rl.log_every=2"]
"""--quick: tiny splits, 30 pretraining steps, one rollout batch (a smoke run, not a measurement)."""


def searches(args: argparse.Namespace) -> dict[str, dict[str, dict | None]]:
    """Sweep name -> method name -> search block."""
    guided: dict[str, dict | None] = {"greedy_pretrain": None}
    searched: dict[str, dict | None] = {}
    for w in args.cfg_weights:
        for schedule in ("constant", "smooth"):
            guided[f"cfg_{schedule}_w{w:g}"] = {"method": "discrete_cfg", "weight": w, "schedule": schedule}
    for budget in args.budgets:
        searched[f"best_of_n_{budget}"] = {"method": "best_of_n", "reward": "exact_verifier", "particles": budget}
        searched[f"particle_gibbs_{budget // 2}x2"] = {"method": "particle_gibbs", "reward": "exact_verifier",
                                                       "particles": budget // 2, "iterations": 2}
    rl: dict[str, dict | None] = {"greedy_rl": None}
    for w in args.rfg_weights:
        rl[f"rfg_w{w:g}"] = {"method": "rfg", "reference": "pretrain", "weight": w}
    return {"pretrained": guided, "pretrained_search": searched, "rl": rl}


STAGES = {"pretrained": ("sample_pretrained", "evaluate_pretrained"),
          "pretrained_search": ("sample_pretrained", "evaluate_pretrained"), "rl": ("sample", "evaluate")}
"""Sweep name -> (the sample stage its cells set the search block of, the evaluate stage scoring it)."""


def records(done: SweepRun, blocks: dict[str, dict | None], sample: str, evaluate: str) -> list[dict]:
    """One row per cell: method, seed, held-out accuracy and reward, NFE and sampling wall time."""
    names = {json.dumps(block, sort_keys=True): name for name, block in blocks.items()}
    rows = []
    for row in done.report["cells"]:
        nodes = done.cells[row["cell"]]
        sampled, scored = nodes[sample]["metrics"], nodes[evaluate]["metrics"]
        rows.append({"method": names[json.dumps(row["params"][f"stages.{sample}.search"], sort_keys=True)],
                     "seed": row["params"].get(f"stages.{sample}.seed", 0), "accuracy": scored["model"]["accuracy"],
                     "reward": scored["model"]["reward"], "nfe_per_sample": sampled["nfe_per_sample"],
                     "wall_s": sampled["sampling_wall_s"]})
        r = rows[-1]
        print(f"{r['method']:>22} seed {r['seed']}: accuracy {r['accuracy']:.3f}, NFE {r['nfe_per_sample']:.0f}",
              flush=True)
    return rows


def summarise(rows: list[dict], args: argparse.Namespace) -> tuple[dict, dict]:
    """Mean and std over seeds per method, and the differences the papers claim, in accuracy points."""
    summary = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        summary[name] = {k: {"mean": statistics.fmean(r[k] for r in mine),
                             "std": statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0}
                         for k in ("accuracy", "reward", "nfe_per_sample", "wall_s")}
    accuracy = {n: v["accuracy"]["mean"] for n, v in summary.items()}
    gains = {"rfg_minus_rl_points": {n: 100 * (a - accuracy["greedy_rl"]) for n, a in accuracy.items()
                                     if n.startswith("rfg")},
             "smooth_minus_constant_cfg_points": {
                 f"w{w:g}": 100 * (accuracy[f"cfg_smooth_w{w:g}"] - accuracy[f"cfg_constant_w{w:g}"])
                 for w in args.cfg_weights},
             "particle_gibbs_minus_best_of_n_points": {
                 str(b): 100 * (accuracy[f"particle_gibbs_{b // 2}x2"] - accuracy[f"best_of_n_{b}"])
                 for b in args.budgets}}
    return summary, gains


def main() -> None:
    """Run the three sweeps on one root, collect accuracy and NFE per method, print and write JSON."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of best-of-N / particle Gibbs")
    options.add_argument("--budgets", type=int, nargs="+", default=[4, 8])
    options.add_argument("--rfg-weights", type=float, nargs="+", default=[1.0, 2.0])
    options.add_argument("--cfg-weights", type=float, nargs="+", default=[1.0, 2.0])
    options.add_argument("--cond-dropout", type=float, default=0.1)
    options.add_argument("--samples", type=int, default=None, help="held-out prompts (default 100, --quick 16)")
    options.add_argument("--parallel", type=int, default=1, help="runtime.max_parallel_stages of the sweeps")
    options.add_argument("--root", type=Path, default=None, help="artifact root (default: a temporary folder)")
    args = open_benchmark(options.parse_args())
    if args.quick:
        args.seeds, args.budgets, args.rfg_weights, args.cfg_weights = [0], [4], [1.0], [1.0]
    samples = args.samples or (16 if args.quick else 100)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffpipe-search-countdown-") as tmp:
        root = args.root or Path(tmp) / "artifacts"
        base = [f"storage.root={root}", "runtime.device=cpu", f"runtime.max_parallel_stages={args.parallel}",
                f"stages.pretrain.cond_dropout={args.cond_dropout}", f"stages.sample_pretrained.num_samples={samples}",
                f"stages.sample.num_samples={samples}", *(QUICK if args.quick else [])]
        rows, sweeps = [], {}
        for sweep, blocks in searches(args).items():
            sample, evaluate = STAGES[sweep]
            grid = {f"stages.{sample}.search": list(blocks.values()),
                    **({f"stages.{sample}.seed": args.seeds} if sweep == "pretrained_search" else {})}
            done = run_sweep(SPEC, grid, 1, base, Path(tmp) / sweep)
            sweeps[sweep] = {"wall_s": done.wall_s, "cells": len(done.report["cells"]),
                             "stage_executions": stage_counts(done.report)}
            rows += records(done, blocks, sample, evaluate)
    executed = {stage: sum(s["stage_executions"][stage].get("executed", 0) for s in sweeps.values())
                for stage in ("data", "pretrain", "rl")}
    print(f"executions over all sweeps: {executed}", flush=True)
    summary, gains = summarise(rows, args)
    result = {"spec": "pipelines/countdown.yaml", "overrides": base, "searches": searches(args),
              "config": {**vars(args), "samples": samples, "out": str(args.out), "root": str(args.root)},
              "sweeps": sweeps, "shared_stage_executions": executed, "summary": summary, "gains": gains,
              "runs": rows, "benchmark_wall_s": time.perf_counter() - t0}
    write_result("search_countdown", result, args.out)


if __name__ == "__main__":
    main()

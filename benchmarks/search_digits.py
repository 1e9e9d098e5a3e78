"""Inference-time search on digits: reward and Frechet distance against NFE, each method vs best-of-N.

One class-conditional flow-matching UNet (the shipped digits spec with a small UNet, pretrained once,
runtime seed 0) is sampled by sample stages with a `search:` block, each scored by an evaluate stage:
the whole spec runs in this process through the pipeline's own stage functions and store
(benchmarks/inprocess.py), so every number is what `diffpipe run` would record.

Methods at budgets B in --budgets (NFE per sample about B x steps on a `steps`-step SDE grid):
best_of_n (N = B, ODE), fk_steering with the max and the difference potential (B particles, SDE),
tree_search DTS and DTS* (B rollouts). B = 1 best-of-N is plain Euler sampling. Reward: the digits
classifier's log-probability of the requested class (`classifier_logprob`); beside it the evaluate
stage's Frechet distance in the classifier's features (reward hacking shows as FD rising) and
classifier accuracy. Seeds: the sample stages' `seed` (initial noise and SDE noise), one model.

One CPU thread; the machine is shared, so wall times are noisy. Usage:
    python benchmarks/search_digits.py [--seeds 0 1 2] [--budgets 1 4 8 16]
Writes benchmarks/results/search_digits.json, one entry per --pretrain-steps (a briefly pretrained
model leaves the classifier reward room to rise; a well-trained one saturates it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inprocess import metrics_of, run_in_process  # noqa: E402

from diffpipe.flows.spec_loading import validate_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "search_digits.json"
CACHE = Path(tempfile.gettempdir()) / "diffpipe_search_digits_cache"
REWARD = "classifier_logprob"


def methods(budget: int, reward: str = REWARD) -> dict[str, dict]:
    """Search blocks of every method at one budget with `reward` (shared with search_cei.py)."""
    return {
        "best_of_n": {"method": "best_of_n", "reward": reward, "particles": budget},
        "fk_max": {"method": "fk_steering", "reward": reward, "particles": max(2, budget), "potential": "max"},
        "fk_difference": {"method": "fk_steering", "reward": reward, "particles": max(2, budget),
                          "potential": "difference"},
        "dts": {"method": "tree_search", "reward": reward, "rollouts": budget, "variant": "dts"},
        "dts_star": {"method": "tree_search", "reward": reward, "rollouts": budget, "variant": "dts_star"},
    }


def pipeline(args: argparse.Namespace) -> dict:
    """The digits spec with a small UNet and one sample + evaluate stage per (method, budget, seed)."""
    raw = yaml.safe_load((REPO / "pipelines" / "digits.yaml").read_text())
    raw["name"] = "search_digits"
    raw["model"] = {"arch": "unet2d", "block_out_channels": [16, 32], "norm_num_groups": 8, "layers_per_block": 1}
    raw["stages"][0].update(steps=args.pretrain_steps, batch_size=64, checkpoint_every=args.pretrain_steps)
    stages = [raw["stages"][0]]
    for seed in args.seeds:
        for budget in args.budgets:
            for name, search in methods(budget).items():
                if budget == 1 and name != "best_of_n":
                    continue
                tag = f"{name}_b{budget}_s{seed}"
                stages.append({"name": f"sample_{tag}", "stage": "sample", "model": "pretrain", "seed": seed,
                               "num_samples": args.samples, "batch_size": args.samples,
                               "scheduler": {"steps": args.steps}, "search": search})
                stages.append({"name": f"evaluate_{tag}", "stage": "evaluate", "samples": f"sample_{tag}",
                               "metrics": ["domain"]})
    raw["stages"] = stages
    raw["storage"] = {"root": str(CACHE)}
    raw["runtime"] = {"device": "cpu", "seed": 0}
    return raw


DIGITS_METRICS = ("reward", "nfe_per_sample", "frechet_distance", "classifier_accuracy", "search_wall_s")


def summarise(rows: list[dict], keys: tuple[str, ...] = DIGITS_METRICS, quality: str = "frechet_distance",
              label: str = "fd") -> dict:
    """Mean and std over seeds per (method, budget) of `keys`, and the equal-NFE comparisons with best-of-N:
    reward and `quality` (as `<label>_minus_best_of_n`) differences, and the NFE at which each method first
    reaches best-of-N's reward at its top budget (shared with search_cei.py)."""
    table: dict[str, dict[int, dict]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        for budget in sorted({r["budget"] for r in rows if r["method"] == method}):
            group = [r for r in rows if r["method"] == method and r["budget"] == budget]
            table.setdefault(method, {})[budget] = {
                k: {"mean": statistics.fmean(r[k] for r in group),
                    "std": statistics.stdev(r[k] for r in group) if len(group) > 1 else 0.0}
                for k in keys}
    bon = table["best_of_n"]
    comparisons = {}
    for method, by_budget in table.items():
        if method == "best_of_n":
            continue
        comparisons[method] = {
            budget: {"reward_minus_best_of_n": v["reward"]["mean"] - bon[budget]["reward"]["mean"],
                     f"{label}_minus_best_of_n": v[quality]["mean"] - bon[budget][quality]["mean"],
                     "nfe_ratio_to_best_of_n": v["nfe_per_sample"]["mean"] / bon[budget]["nfe_per_sample"]["mean"]}
            for budget, v in by_budget.items() if budget in bon}
        top = max(bon)
        reached = [b for b, v in sorted(by_budget.items()) if v["reward"]["mean"] >= bon[top]["reward"]["mean"]]
        comparisons[method]["nfe_to_reach_best_of_n_at_top_budget"] = (
            None if not reached else by_budget[reached[0]]["nfe_per_sample"]["mean"])
        comparisons[method]["best_of_n_nfe_at_top_budget"] = bon[top]["nfe_per_sample"]["mean"]
    return {"table": table, "vs_best_of_n": comparisons}


def environment() -> dict:
    """Commit, versions, device, threads and date of this run."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"commit": commit, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version(), "device": "cpu", "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def main() -> None:
    """Run the spec, collect each sample stage's search metrics and its evaluation, print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--pretrain-steps", type=int, default=800)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    spec = validate_spec(pipeline(args))
    store, refs = run_in_process(spec)
    rows = []
    for stage in spec.stages:
        if stage.stage != "sample":
            continue
        tag = stage.name.removeprefix("sample_")
        method, rest = tag.rsplit("_b", 1)
        budget, seed = (int(v) for v in rest.split("_s"))
        sampled, scored = metrics_of(store, refs[stage.name]), metrics_of(store, refs[f"evaluate_{tag}"])
        rows.append({"method": method, "budget": budget, "seed": seed, "reward": sampled["search_reward_mean"],
                     "nfe_per_sample": sampled["nfe_per_sample"], "search_wall_s": sampled["search_wall_s"],
                     "flops_per_evaluation": sampled["flops_per_evaluation"],
                     "frechet_distance": scored["model"]["frechet_distance"],
                     "classifier_accuracy": scored["model"]["classifier_accuracy"],
                     "data_floor_frechet_distance": scored["data_floor"]["frechet_distance"]})
        print(f"{method:>14} B={budget:<3} seed {seed}: reward {rows[-1]['reward']:.3f}, "
              f"NFE {rows[-1]['nfe_per_sample']:.0f}, FD {rows[-1]['frechet_distance']:.2f}, "
              f"acc {rows[-1]['classifier_accuracy']:.3f}", flush=True)
    result = {"config": vars(args), "environment": environment(), "summary": summarise(rows), "runs": rows,
              "benchmark_wall_s": time.perf_counter() - started}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    everything = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    everything[f"pretrain_steps={args.pretrain_steps}"] = result
    RESULTS.write_text(json.dumps(everything, indent=1))
    print(json.dumps(result["summary"]["vs_best_of_n"], indent=1))
    print(f"wrote {RESULTS} in {result['benchmark_wall_s']:.0f} s")


if __name__ == "__main__":
    main()

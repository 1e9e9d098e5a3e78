"""Inference-time methods on Countdown: held-out accuracy of particle Gibbs, RFG and discrete CFG vs best-of-N.

The shipped Countdown spec (tiny masked-diffusion LM; pretrain with prompt dropout `cond_dropout` so
classifier-free guidance has an unconditional branch; the spec's coupled-GRPO `rl` stage as the RL'd
policy) runs in this process through the pipeline's own stage functions (benchmarks/inprocess.py),
with sample stages on the held-out prompts and an evaluate stage for each:

- plain greedy block decoding of the pretrained and the RL'd model (the baselines);
- best_of_n (N completions at temperature 1, the verifier picks) and particle_gibbs (particles x
  iterations, the verifier's reward as potential) on the pretrained model, at equal NFE budgets;
- rfg on the RL'd policy against the pretrained reference, w in --rfg-weights (greedy);
- discrete_cfg on the pretrained model, constant vs smooth schedule, w in --cfg-weights (greedy).

Best-of-N and particle Gibbs use the exact verifier at sampling time (an oracle on held-out prompts:
this measures search, not generalisation). Seeds vary the sample stages' noise; the greedy methods
(plain, RFG, CFG) are deterministic and run for the first seed only. One CPU thread; a shared 2-core machine. Usage:
    python benchmarks/search_countdown.py [--seeds 0 1 2]
Writes benchmarks/results/search_countdown.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inprocess import metrics_of, run_in_process  # noqa: E402
from search_digits import environment  # noqa: E402

from diffpipe.flows.spec_loading import validate_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "search_countdown.json"
CACHE = Path(tempfile.gettempdir()) / "diffpipe_search_countdown_cache"


def methods(args: argparse.Namespace) -> dict[str, tuple[str, dict | None]]:
    """Stage name -> (checkpoint stage it samples, search block)."""
    out: dict[str, tuple[str, dict | None]] = {"greedy_pretrain": ("pretrain", None), "greedy_rl": ("rl", None)}
    for budget in args.budgets:
        out[f"best_of_n_{budget}"] = ("pretrain", {"method": "best_of_n", "reward": "exact_verifier",
                                                   "particles": budget})
        out[f"particle_gibbs_{budget // 2}x2"] = ("pretrain", {"method": "particle_gibbs", "reward": "exact_verifier",
                                                               "particles": budget // 2, "iterations": 2})
    for w in args.rfg_weights:
        out[f"rfg_w{w:g}"] = ("rl", {"method": "rfg", "reference": "pretrain", "weight": w})
    for w in args.cfg_weights:
        for schedule in ("constant", "smooth"):
            out[f"cfg_{schedule}_w{w:g}"] = ("pretrain", {"method": "discrete_cfg", "weight": w,
                                                          "schedule": schedule})
    return out


def stochastic(name: str) -> bool:
    """Whether a method's samples depend on the stage seed (greedy decoding, RFG and CFG do not)."""
    return name.startswith(("best_of_n", "particle_gibbs"))


def pipeline(args: argparse.Namespace) -> dict:
    """The shipped Countdown spec with prompt dropout and one sample + evaluate stage per method and seed."""
    raw = yaml.safe_load((REPO / "pipelines" / "countdown.yaml").read_text())
    raw["name"] = "search_countdown"
    pretrain, rl = raw["stages"][0], next(s for s in raw["stages"] if s["stage"] == "rl")
    pretrain["cond_dropout"] = args.cond_dropout
    stages = [pretrain, rl]
    sampler = next(s for s in raw["stages"] if s["stage"] == "sample")["scheduler"]
    for seed in args.seeds:
        for name, (model, search) in methods(args).items():
            if seed != args.seeds[0] and not stochastic(name):
                continue
            stage = {"name": f"{name}_s{seed}", "stage": "sample", "model": model, "seed": seed,
                     "num_samples": args.samples, "scheduler": sampler}
            if search is not None:
                stage["search"] = search
            stages += [stage, {"name": f"evaluate_{name}_s{seed}", "stage": "evaluate", "samples": stage["name"],
                               "metrics": ["domain"]}]
    raw["stages"] = stages
    raw["storage"] = {"root": str(CACHE)}
    raw["runtime"] = {"device": "cpu", "seed": 0}
    return raw


def main() -> None:
    """Run the spec, collect accuracy and NFE per method, print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rfg-weights", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--cfg-weights", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--cond-dropout", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    spec = validate_spec(pipeline(args))
    store, refs = run_in_process(spec)
    rows = []
    for seed in args.seeds:
        for name in methods(args):
            if seed != args.seeds[0] and not stochastic(name):
                continue
            sampled = metrics_of(store, refs[f"{name}_s{seed}"])
            scored = metrics_of(store, refs[f"evaluate_{name}_s{seed}"])
            rows.append({"method": name, "seed": seed, "accuracy": scored["model"]["accuracy"],
                         "reward": scored["model"]["reward"], "nfe_per_sample": sampled["nfe_per_sample"],
                         "wall_s": sampled["sampling_wall_s"]})
            print(f"{name:>22} seed {seed}: accuracy {rows[-1]['accuracy']:.3f}, NFE {rows[-1]['nfe_per_sample']:.0f}",
                  flush=True)
    summary = {name: {k: {"mean": statistics.fmean(r[k] for r in rows if r["method"] == name),
                          "std": statistics.stdev([r[k] for r in rows if r["method"] == name])
                          if len(args.seeds) > 1 and stochastic(name) else 0.0}
                      for k in ("accuracy", "reward", "nfe_per_sample", "wall_s")} for name in methods(args)}
    rl = summary["greedy_rl"]["accuracy"]["mean"]
    accuracy = {n: v["accuracy"]["mean"] for n, v in summary.items()}
    gains = {"rfg_minus_rl_points": {n: 100 * (a - rl) for n, a in accuracy.items() if n.startswith("rfg")},
             "smooth_minus_constant_cfg_points": {
                 f"w{w:g}": 100 * (accuracy[f"cfg_smooth_w{w:g}"] - accuracy[f"cfg_constant_w{w:g}"])
                 for w in args.cfg_weights},
             "particle_gibbs_minus_best_of_n_points": {
                 str(b): 100 * (summary[f"particle_gibbs_{b // 2}x2"]["accuracy"]["mean"]
                                - summary[f"best_of_n_{b}"]["accuracy"]["mean"]) for b in args.budgets}}
    result = {"config": vars(args), "environment": environment(), "summary": summary, "gains": gains, "runs": rows,
              "benchmark_wall_s": time.perf_counter() - started}
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps({"summary": {n: v["accuracy"] for n, v in summary.items()}, "gains": gains}, indent=1))
    print(f"wrote {RESULTS} in {result['benchmark_wall_s']:.0f} s")


if __name__ == "__main__":
    main()

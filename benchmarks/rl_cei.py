"""RL on Coulomb explosion imaging: held-out MAE and physics round trip before and after RL, per algorithm.

Runs `diffpipe run pipelines/cei_rl.yaml` once per (seed, algorithm) in one artifact root: the data,
the pretrained flow-matching model and its "before" samples depend only on the seed, so they are built
once per seed and every algorithm fine-tunes the same checkpoint for the same number of rollout batches
(Flow-GRPO makes two updates per rollout batch, so it gets twice the optimizer steps). The reward is
`physics_round_trip`; the metrics are the evaluate stage's on held-out molecules (one draw per event,
and the mean of the draws). Prints and writes benchmarks/results/rl_cei.json.

    python benchmarks/rl_cei.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "pipelines" / "cei_rl.yaml"
RESULTS = REPO / "benchmarks" / "results" / "rl_cei.json"
ALGORITHMS = {
    # CPU-sized options; everything else is the schema's reference default
    "flow_grpo": {"algorithm": "flow_grpo", "sampler_steps": 8},
    "diffusion_nft": {"algorithm": "diffusion_nft", "sampler_steps": 8, "train_timesteps": 4},
    "awm": {"algorithm": "awm", "sampler_steps": 8, "timesteps_per_sample": 4},
    "ddrl": {"algorithm": "ddrl", "sampler_steps": 8, "timesteps_per_sample": 4},
}
METRICS = ("mae_frame_bohr", "mae_kabsch_bohr", "rmsd_bohr", "momentum_rel_error", "coverage_0.9")


def run(root: Path, seed: int, algorithm: str, rollouts: int) -> dict:
    """One `diffpipe run` of the spec; stage name -> summary entry."""
    updates = 2 if algorithm == "flow_grpo" else 1
    overrides = [f"storage.root={root}", f"runtime.seed={seed}",
                 f"stages.rl.algorithm={json.dumps(ALGORITHMS[algorithm])}",
                 f"stages.rl.steps={rollouts * updates}", f"stages.rl.checkpoint_every={rollouts * updates}"]
    command = [sys.executable, "-m", "diffpipe.flows.cli", "run", str(SPEC), "--json"]
    for o in overrides:
        command += ["--set", o]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        sys.exit(f"pipeline failed ({done.returncode}):\n{done.stderr[-4000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    return {s["name"]: s for s in summary["stages"]}


def scores(evaluate: dict) -> dict:
    """Headline held-out metrics of one draw per event and of the mean of the draws."""
    metrics = evaluate["metrics"]
    one = {k: metrics["sample"]["overall"][k] for k in METRICS}
    mean = {k: metrics["sample_mean"]["overall"][k] for k in METRICS if k in metrics["sample_mean"]["overall"]}
    return {"one_draw": one, "mean_of_draws": mean}


def summarise(runs: list[dict]) -> dict:
    """Per algorithm, across seeds: before, after and change of each metric; reward gain; RL wall time."""
    out = {}
    for algorithm in ALGORITHMS:
        mine = [r for r in runs if r["algorithm"] == algorithm]
        if not mine:
            continue
        entry: dict = {"seeds": [r["seed"] for r in mine], "reward_gain": [r["reward"]["gain"] for r in mine],
                       "rl_wall_s": [r["rl_wall_s"] for r in mine]}
        for k in METRICS:
            before = np.array([r["before"]["one_draw"][k] for r in mine])
            after = np.array([r["after"]["one_draw"][k] for r in mine])
            entry[k] = {"before_mean": float(before.mean()), "after_mean": float(after.mean()),
                        "change": (after - before).tolist(), "change_mean": float((after - before).mean()),
                        "change_spread": float((after - before).std())}
        out[algorithm] = entry
    return out


def main() -> None:
    """Run every (seed, algorithm) pair and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--rollouts", type=int, default=100, help="rollout batches per run (equal for all)")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "diffpipe_rl_cei")
    args = parser.parse_args()
    t0, runs = time.perf_counter(), []
    for seed in args.seeds:
        for algorithm in args.algorithms:
            nodes = run(args.root, seed, algorithm, args.rollouts)
            rl = nodes["rl"]["metrics"]
            record = {"seed": seed, "algorithm": algorithm, "reward": rl["reward/physics_round_trip"],
                      "samples_generated": rl["samples_generated"], "rl_wall_s": rl["train_wall_s"],
                      "before": scores(nodes["evaluate_diffusion"]), "after": scores(nodes["evaluate_rl"])}
            b, a = record["before"]["one_draw"], record["after"]["one_draw"]
            print(f"seed {seed} {algorithm:>13}: MAE {b['mae_frame_bohr']:.4f} -> {a['mae_frame_bohr']:.4f} Bohr, "
                  f"round trip {b['momentum_rel_error']:.4f} -> {a['momentum_rel_error']:.4f}, "
                  f"reward {record['reward']['first']:.4f} -> {record['reward']['last']:.4f}, "
                  f"{record['rl_wall_s']:.0f} s", flush=True)
            runs.append(record)
    result = {"spec": "pipelines/cei_rl.yaml", "config": {**vars(args), "root": str(args.root)},
              "summary": summarise(runs), "runs": runs, "benchmark_wall_s": time.perf_counter() - t0}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {RESULTS} in {result['benchmark_wall_s']:.0f} s")


if __name__ == "__main__":
    main()

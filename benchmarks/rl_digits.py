"""RL on digits: Flow-GRPO, DiffusionNFT, AWM and DDRL at an equal budget of generated samples, as sweeps.

Sweeps of the shipped specs (`diffpipe sweep` through the shared harness), all on one artifact root with a
tiny class-conditional UNet pretrained briefly (so the classifier reward has room to rise); a stage that
cells share (the data, the pretrain of a seed) is computed once, and later sweeps find it cached:

- "before": `pipelines/digits.yaml` over the seeds with the same data, model and pretraining as the RL
  specs (the same pretrain cache key): the pretrained model sampled and scored by the evaluate stage;
- `pipelines/digits_rl.yaml` over algorithm x reward (`classifier_logprob`, the hackable `ink`) x seeds,
  every algorithm for the same number of rollout batches (Flow-GRPO makes two updates per batch, so it has
  twice the optimizer steps, in its own sweep); the spec's sample and evaluate stages score the result;
- two rewards at once (classifier_logprob and ink) with one algorithm, combined by a weighted sum or MARBLE.

Reported per reward and algorithm, across seeds: the rl stage's training reward (mean of the first and last
tenth of its rollout batches) and gain; the evaluate stage's held-out classifier log-probability, accuracy
and Frechet distance (drift) before and after RL, and the drift per unit of held-out log-probability gain;
the rl stage's wall time. Reward against samples generated and against wall time: the rl stage's own log
(`reward_log.json` of its artifact), copied per run. `stage_executions` counts per sweep how many cells
executed each stage and how many found it cached. Cells run one stage at a time
(`runtime.max_parallel_stages=1`, --parallel to change it) so RL wall times are not shared.

    python benchmarks/rl_digits.py --seeds 0 1 2 --rollouts 24
    python benchmarks/rl_digits.py --quick      # a smoke run of minutes, written to a temp folder
Writes benchmarks/results/rl_digits.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import REPO, SweepRun, open_benchmark, parser, run_sweep, stage_counts, write_result
from search_digits import SMALL_UNET

from diffpipe.schemas import ArtifactRef
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import read_json

BEFORE_SPEC, RL_SPEC = REPO / "pipelines" / "digits.yaml", REPO / "pipelines" / "digits_rl.yaml"
ALGORITHMS = {
    # CPU-sized options; everything else is the schema's reference default
    "flow_grpo": {"algorithm": "flow_grpo", "sampler_steps": 10},
    "diffusion_nft": {"algorithm": "diffusion_nft", "sampler_steps": 10, "train_timesteps": 3},
    "awm": {"algorithm": "awm", "sampler_steps": 10, "timesteps_per_sample": 3},
    "ddrl": {"algorithm": "ddrl", "sampler_steps": 10, "timesteps_per_sample": 3},
}
UPDATES_PER_ROLLOUT = {"flow_grpo": 2}
"""Optimizer steps per rollout batch (1 for the others): equal rollout budgets need `rollouts x this` steps."""
REWARDS = ("classifier_logprob", "ink")
HELD_OUT = ("classifier_logprob", "classifier_accuracy", "frechet_distance")
"""The evaluate stage's scores reported before and after RL."""


def shared(args: argparse.Namespace, root: Path) -> list[str]:
    """Overrides of every sweep: the root, the tiny UNet and short pretraining (one pretrain key per seed in
    both specs), the sample and evaluate stages' sizes, CPU, --parallel stages at a time."""
    return [f"storage.root={root}", "runtime.device=cpu", f"runtime.max_parallel_stages={args.parallel}",
            f"model={SMALL_UNET}", f"stages.pretrain.steps={args.pretrain_steps}", "stages.pretrain.batch_size=64",
            f"stages.pretrain.checkpoint_every={args.pretrain_steps}", "stages.pretrain.warmup_steps=20",
            f"stages.sample.num_samples={args.eval_samples}", f"stages.sample.scheduler.steps={args.eval_steps}",
            "stages.evaluate.metrics=[domain]"]


def rl_options(args: argparse.Namespace, updates: int) -> list[str]:
    """The rl stage at the benchmark's budget: `rollouts` batches of group_size x groups rollouts."""
    steps = args.rollouts * updates
    return [f"stages.rl.group_size={args.group_size}", f"stages.rl.groups_per_step={args.groups}",
            f"stages.rl.lr={args.lr}", "stages.rl.ema_decay=null", f"stages.rl.steps={steps}",
            f"stages.rl.checkpoint_every={steps}", f"stages.rl.log_every={steps}"]


def held_out(nodes: dict[str, dict]) -> dict[str, float]:
    """The evaluate stage's held-out scores of one cell's samples."""
    return {k: nodes["evaluate"]["metrics"]["model"][k] for k in HELD_OUT}


def reward_curve(store: ArtifactStore, rl: dict) -> dict[str, list]:
    """The rl stage's log at the rollout batches (samples generated, wall time, rewards), from its artifact."""
    log = read_json(store.local_path(ArtifactRef.model_validate(rl["artifact"])) / "reward_log.json")
    log.update(store.manifest(rl["artifact"]["sha256"])["lineage"]["timings"].get("reward_log.json", {}))
    drawn = [i for i, r in enumerate(log["reward"]) if r is not None]
    return {name: [log[name][i] for i in drawn] for name in log
            if name in ("samples", "wall_s", "reward") or name.startswith("reward/")}


def records(done: SweepRun, store: ArtifactStore, before: dict[int, dict]) -> list[dict]:
    """One record per RL cell: algorithm, reward(s), seed, training rewards, held-out scores, curve, wall time."""
    out = []
    for row in done.report["cells"]:
        nodes, params = done.cells[row["cell"]], row["params"]
        rl = nodes["rl"]["metrics"]
        names = [k.split("/", 1)[1] for k in rl if k.startswith("reward/")]
        combine = params.get("stages.rl.combine")
        rec = {"algorithm": rl["algorithm"], "seed": row["seed"], "reward": "+".join(names), "combine": combine,
               "training_reward": {n: rl[f"reward/{n}"] for n in names},
               "samples_generated": rl["samples_generated"], "rl_wall_s": rl["train_wall_s"],
               "before": before[row["seed"]], "after": held_out(nodes), "curve": reward_curve(store, nodes["rl"])}
        out.append(rec)
        gains = ", ".join(f"{n} {v['first']:.4f} -> {v['last']:.4f}" for n, v in rec["training_reward"].items())
        print(f"{combine or rec['reward']:>18} {rec['algorithm']:>13} seed {rec['seed']}: {gains}; held out FD "
              f"{rec['before']['frechet_distance']:.2f} -> {rec['after']['frechet_distance']:.2f}, acc "
              f"{rec['before']['classifier_accuracy']:.3f} -> {rec['after']['classifier_accuracy']:.3f}, "
              f"{rec['rl_wall_s']:.1f} s", flush=True)
    return out


def summarise(runs: list[dict], key: str) -> dict:
    """Per `key` (reward or combine) and algorithm, across seeds: training reward gains, held-out scores before
    and after, drift per unit of held-out log-probability gain, RL wall time."""
    out: dict = {}
    for group in dict.fromkeys(r[key] for r in runs):
        by_algo = {}
        for algo in ALGORITHMS:
            mine = [r for r in runs if r[key] == group and r["algorithm"] == algo]
            if not mine:
                continue
            entry: dict = {"seeds": [r["seed"] for r in mine], "rl_wall_s": [r["rl_wall_s"] for r in mine],
                           "samples_generated": mine[0]["samples_generated"]}
            for name in mine[0]["training_reward"]:
                entry[f"training_{name}"] = {
                    "first_mean": float(np.mean([r["training_reward"][name]["first"] for r in mine])),
                    "last_mean": float(np.mean([r["training_reward"][name]["last"] for r in mine])),
                    "gain": [r["training_reward"][name]["gain"] for r in mine]}
            for metric in HELD_OUT:
                before = np.array([r["before"][metric] for r in mine])
                after = np.array([r["after"][metric] for r in mine])
                entry[f"held_out_{metric}"] = {"before_mean": float(before.mean()), "after_mean": float(after.mean()),
                                               "change": (after - before).tolist()}
            gain = entry["held_out_classifier_logprob"]["change"]
            drift = entry["held_out_frechet_distance"]["change"]
            entry["fd_change_per_held_out_logprob_gain"] = [d / g if g > 0 else None
                                                            for d, g in zip(drift, gain, strict=True)]
            by_algo[algo] = entry
        out[group] = by_algo
    return out


def main() -> None:
    """The before sweep, an RL sweep per number of updates per rollout batch, the two-reward sweep."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="runtime seeds (one pretrain each)")
    options.add_argument("--rollouts", type=int, default=24, help="rollout batches per run (equal for all)")
    options.add_argument("--group-size", type=int, default=8)
    options.add_argument("--groups", type=int, default=4)
    options.add_argument("--lr", type=float, default=1e-4)
    options.add_argument("--pretrain-steps", type=int, default=150)
    options.add_argument("--eval-samples", type=int, default=200, help="samples the evaluate stage scores")
    options.add_argument("--eval-steps", type=int, default=10, help="Euler steps of those samples")
    options.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS))
    options.add_argument("--multi-algorithm", default="diffusion_nft",
                         help="algorithm of the two-reward runs (weighted sum vs MARBLE); 'none' skips them")
    options.add_argument("--parallel", type=int, default=1, help="runtime.max_parallel_stages of the sweeps")
    options.add_argument("--root", type=Path, default=None, help="artifact root (default: a temporary folder)")
    args = open_benchmark(options.parse_args())
    if args.quick:
        args.seeds, args.rollouts, args.pretrain_steps, args.group_size, args.groups = [0], 2, 20, 4, 2
        args.eval_samples, args.eval_steps, args.algorithms = 20, 4, ["flow_grpo", "diffusion_nft"]
    t0 = time.perf_counter()
    seeds = {"runtime.seed": args.seeds}
    with tempfile.TemporaryDirectory(prefix="diffpipe-rl-digits-") as tmp:
        root, work = args.root or Path(tmp) / "artifacts", Path(tmp)
        store, base = ArtifactStore(str(root)), shared(args, root)
        first = run_sweep(BEFORE_SPEC, seeds, 1, base, work / "before")
        before = {row["seed"]: held_out(first.cells[row["cell"]]) for row in first.report["cells"]}
        sweeps = {"before": {"wall_s": first.wall_s, "stage_executions": stage_counts(first.report)}}
        runs, multi = [], []
        for updates in sorted({UPDATES_PER_ROLLOUT.get(a, 1) for a in args.algorithms}):
            mine = [ALGORITHMS[a] for a in args.algorithms if UPDATES_PER_ROLLOUT.get(a, 1) == updates]
            grid = {"stages.rl.algorithm": mine, "stages.rl.rewards": [[{"name": r}] for r in REWARDS], **seeds}
            done = run_sweep(RL_SPEC, grid, 1, [*base, *rl_options(args, updates)], work / f"rl{updates}")
            sweeps[f"rl_{updates}_updates_per_rollout"] = {"wall_s": done.wall_s,
                                                           "stage_executions": stage_counts(done.report)}
            runs += records(done, store, before)
        if args.multi_algorithm != "none":
            both = [f"stages.rl.rewards={json.dumps([{'name': r} for r in REWARDS])}",
                    f"stages.rl.algorithm={json.dumps(ALGORITHMS[args.multi_algorithm])}",
                    *rl_options(args, UPDATES_PER_ROLLOUT.get(args.multi_algorithm, 1))]
            done = run_sweep(RL_SPEC, {"stages.rl.combine": ["weighted_sum", "marble"], **seeds}, 1,
                             [*base, *both], work / "multi")
            sweeps["two_rewards"] = {"wall_s": done.wall_s, "stage_executions": stage_counts(done.report)}
            multi = records(done, store, before)
    executed = {stage: sum(s["stage_executions"].get(stage, {}).get("executed", 0) for s in sweeps.values())
                for stage in ("data", "pretrain")}
    print(f"executions over all sweeps: {executed} ({len(args.seeds)} seeds)", flush=True)
    result = {"specs": ["pipelines/digits.yaml", "pipelines/digits_rl.yaml"],
              "config": {**vars(args), "out": str(args.out), "root": str(args.root)}, "overrides": base,
              "samples_per_rollout_batch": args.group_size * args.groups, "sweeps": sweeps,
              "shared_stage_executions": executed, "summary": summarise(runs, "reward"),
              "two_rewards": summarise(multi, "combine") if multi else None, "runs": runs + multi,
              "benchmark_wall_s": time.perf_counter() - t0}
    write_result("rl_digits", result, args.out)


if __name__ == "__main__":
    main()

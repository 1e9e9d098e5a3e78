"""RL on digits: Flow-GRPO, DiffusionNFT, AWM and DDRL at an equal budget of generated samples.

A tiny class-conditional flow-matching UNet is pretrained briefly (so the classifier reward has room
to rise), then each algorithm fine-tunes it through the real `rl` stage code (`fine_tune`, the shared
resumable loop) for the same number of rollout batches. Every `eval_every` rollout batches a hook
samples held-out digits from the online weights with a fixed seed (Euler ODE) and measures the
classifier log-probability, ink, classifier accuracy and the digits Frechet distance to the test split
(the evaluate stage's domain metric). Reported:

- reward vs samples generated and vs training wall time (evaluation time excluded);
- drift (Frechet distance) at equal reward gain, interpolated along each run's curve;
- the hackable `ink` reward: ink, Frechet distance and accuracy before and after;
- two rewards at once (classifier_logprob and ink), combined by a weighted sum or by MARBLE.

The data and pretrain stages run in this process through their stage functions (benchmarks/inprocess.py,
cached in an artifact root); the runs are not a `diffpipe sweep` because the curves are measured inside the
rl stage's loop. Prints and writes benchmarks/results/rl_digits.json.

    python benchmarks/rl_digits.py --seeds 0 1 2 --rollouts 24
    python benchmarks/rl_digits.py --quick      # a smoke run of minutes, written to a temp folder
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from harness import REPO, open_benchmark, parser, write_result
from inprocess import run_in_process

from diffpipe.flows.spec_loading import validate_spec
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.data.digits import DigitsDomain
from diffpipe.tasks.data.digits_rewards import classifier_logprob, ink
from diffpipe.tasks.domain import ImageDomain
from diffpipe.tasks.registry import get_domain
from diffpipe.tasks.rl.continuous import rollout, sampler_grid
from diffpipe.tasks.rl.stage import RLRun, fine_tune

CACHE = Path(tempfile.gettempdir()) / "diffpipe_rl_digits_cache"
ALGORITHMS = {
    # CPU-sized options; everything else is the schema's reference default
    "flow_grpo": {"algorithm": "flow_grpo", "sampler_steps": 10},
    "diffusion_nft": {"algorithm": "diffusion_nft", "sampler_steps": 10, "train_timesteps": 3},
    "awm": {"algorithm": "awm", "sampler_steps": 10, "timesteps_per_sample": 3},
    "ddrl": {"algorithm": "ddrl", "sampler_steps": 10, "timesteps_per_sample": 3},
}
MULTI_REWARD = ("classifier_logprob", "ink")


def pipeline(seed: int, pretrain_steps: int, rl: dict) -> dict:
    """The shipped digits_rl spec with a tiny UNet, a short pretraining and the given rl stage."""
    raw = yaml.safe_load((REPO / "pipelines" / "digits_rl.yaml").read_text())
    raw["model"] = {"arch": "unet2d", "block_out_channels": [16, 32], "norm_num_groups": 8, "layers_per_block": 1}
    raw["stages"][0].update(steps=pretrain_steps, batch_size=64, checkpoint_every=pretrain_steps, warmup_steps=20)
    raw["stages"][1] = {"name": "rl", "stage": "rl", "init": "pretrain", **rl}
    raw["stages"] = raw["stages"][:2]
    raw["storage"] = {"root": str(CACHE)}
    raw["runtime"] = {"device": "cpu", "seed": seed}
    return raw


class Evaluator:
    """Held-out samples from the online weights with a fixed seed, scored like the evaluate stage."""

    def __init__(self, data_path: Path, per_class: int, steps: int):
        self.data_path, self.steps = data_path, steps
        self.labels = torch.arange(10).repeat_interleave(per_class)
        self.reference, _ = ImageDomain().load(data_path, "test")

    @torch.no_grad()
    def __call__(self, domain: DigitsDomain, policy) -> dict[str, float]:
        """Scores of one batch of samples."""
        was_training = policy.training
        policy.eval()
        gen = torch.Generator().manual_seed(12345)
        x = rollout(domain.net(policy), self.labels, (len(self.labels), 1, 8, 8), sampler_grid(self.steps), 0.0,
                    gen, torch.device("cpu")).x0
        policy.train(was_training)
        metrics = domain.domain_metrics(self.data_path, x, self.labels, self.reference)
        return {"classifier_logprob": float(classifier_logprob(x, self.labels, self.data_path).mean()),
                "ink": float(ink(x, self.labels, self.data_path).mean()),
                "accuracy": metrics["classifier_accuracy"], "frechet_distance": metrics["frechet_distance"],
                "pixel_max": float(x.max())}


def run_one(algo: str, reward: str, seed: int, args, combine: str | None = None) -> dict:
    """One fine-tuning run with evaluation every `eval_every` rollout batches.

    `combine` (weighted_sum or marble) fine-tunes on classifier_logprob and ink together instead of `reward`.
    """
    rewards = [{"name": r} for r in MULTI_REWARD] if combine else [{"name": reward}]
    rl = {"algorithm": ALGORITHMS[algo], "rewards": rewards, "group_size": args.group_size,
          "groups_per_step": args.groups, "lr": args.lr, "ema_decay": None, "log_every": 1000,
          "combine": combine or "weighted_sum"}
    updates = 2 if algo == "flow_grpo" else 1
    rl.update(steps=args.rollouts * updates, checkpoint_every=10_000 * updates)
    spec = validate_spec(pipeline(seed, args.pretrain_steps, rl))
    store, refs = run_in_process(spec, only={"pretrain"})  # data and pretrain, cached under CACHE
    data_path = store.local_path(refs["data"])
    evaluate, curve, eval_wall = Evaluator(data_path, args.eval_per_class, args.eval_steps), [], [0.0]

    def hook(step: int, run: RLRun) -> None:
        if step % (args.eval_every * updates):
            return
        t0 = time.perf_counter()
        row = {"rollout_batches": step // updates, "samples": step // updates * run.batch_size,
               "train_wall_s": time.perf_counter() - start - eval_wall[0], **evaluate(run.domain, run.policy)}
        curve.append(row)
        eval_wall[0] += time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        key = f"bench-{algo}-{reward}-{seed}-{time.time_ns()}"
        ctx = StageContext(spec, "rl", key, {"data": refs["data"], "init": refs["pretrain"]}, store, Path(tmp),
                           log=lambda m: None, progress=False)
        start = time.perf_counter()
        done = fine_tune(ctx, spec.stage("rl"), hook)
        total = time.perf_counter() - start - eval_wall[0]
        store.clear_run(key)
    curve.append({"rollout_batches": args.rollouts, "samples": args.rollouts * args.group_size * args.groups,
                  "train_wall_s": total, **evaluate(get_domain("digits"), done.policy)})
    return {"algorithm": algo, "reward": reward, "combine": combine, "seed": seed, "train_wall_s": total,
            "curve": curve}


def fd_at_gain(curve: list[dict], reward: str, gain: float) -> float | None:
    """Frechet distance where the evaluation reward first reaches `gain` above its start (linear interpolation)."""
    r0 = curve[0][reward]
    gains = np.array([c[reward] - r0 for c in curve])
    fds = np.array([c["frechet_distance"] for c in curve])
    for i in range(1, len(curve)):
        if gains[i] >= gain:
            w = (gain - gains[i - 1]) / max(gains[i] - gains[i - 1], 1e-12)
            return float(fds[i - 1] + w * (fds[i] - fds[i - 1]))
    return None


def summarise_multi(runs: list[dict]) -> dict:
    """Two rewards at once, per way of combining them: each reward's gain, accuracy and drift across seeds."""
    out: dict = {}
    for combine in sorted({r["combine"] for r in runs}):
        mine = [r for r in runs if r["combine"] == combine]
        first, last = [r["curve"][0] for r in mine], [r["curve"][-1] for r in mine]
        out[combine] = {"seeds": [r["seed"] for r in mine], "algorithm": mine[0]["algorithm"],
                        **{f"{name}_gain": [e[name] - f[name] for f, e in zip(first, last, strict=True)]
                           for name in MULTI_REWARD},
                        "accuracy_end": [e["accuracy"] for e in last],
                        "fd_start": [f["frechet_distance"] for f in first],
                        "fd_end": [e["frechet_distance"] for e in last]}
    return out


def summarise(runs: list[dict]) -> dict:
    """Per reward and algorithm: gains and drift across seeds; drift at a common reward gain."""
    out: dict = {}
    for reward in sorted({r["reward"] for r in runs}):
        rows = [r for r in runs if r["reward"] == reward]
        by_algo: dict = {}
        for algo in ALGORITHMS:
            mine = [r for r in rows if r["algorithm"] == algo]
            if not mine:
                continue
            start, end = [r["curve"][0] for r in mine], [r["curve"][-1] for r in mine]
            by_algo[algo] = {
                "seeds": [r["seed"] for r in mine],
                "reward_start": float(np.mean([s[reward] for s in start])),
                "reward_end": float(np.mean([e[reward] for e in end])),
                "reward_gain": [e[reward] - s[reward] for s, e in zip(start, end, strict=True)],
                "fd_start": float(np.mean([s["frechet_distance"] for s in start])),
                "fd_end": [e["frechet_distance"] for e in end],
                "accuracy_end": [e["accuracy"] for e in end],
                "ink_end": [e["ink"] for e in end],
                "train_wall_s": [r["train_wall_s"] for r in mine],
            }
        positive = [min(g) for g in (a["reward_gain"] for a in by_algo.values()) if min(g) > 0]
        common = 0.5 * min(positive) if positive else None
        for algo, entry in by_algo.items():
            mine = [r for r in rows if r["algorithm"] == algo]
            entry["common_gain"] = common
            entry["fd_at_common_gain"] = None if common is None else [fd_at_gain(r["curve"], reward, common)
                                                                      for r in mine]
        out[reward] = by_algo
    return out


def main() -> None:
    """Run every algorithm on the classifier reward and on ink, then the two-reward runs, for every seed."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options.add_argument("--rollouts", type=int, default=24, help="rollout batches per run (equal for all)")
    options.add_argument("--group-size", type=int, default=8)
    options.add_argument("--groups", type=int, default=4)
    options.add_argument("--lr", type=float, default=1e-4)
    options.add_argument("--pretrain-steps", type=int, default=150)
    options.add_argument("--eval-every", type=int, default=4)
    options.add_argument("--eval-per-class", type=int, default=20)
    options.add_argument("--eval-steps", type=int, default=10)
    options.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    options.add_argument("--ink-seeds", type=int, nargs="*", default=None, help="seeds of the ink runs (default: all)")
    options.add_argument("--multi-algorithm", default="diffusion_nft",
                         help="algorithm of the two-reward runs (weighted sum vs MARBLE); 'none' skips them")
    args = open_benchmark(options.parse_args())
    if args.quick:
        args.seeds, args.rollouts, args.pretrain_steps, args.eval_every = [0], 2, 20, 1
        args.eval_per_class, args.group_size, args.groups, args.ink_seeds, args.multi_algorithm = 2, 4, 2, [], "none"
    t0 = time.perf_counter()
    runs = []
    plan = [(a, "classifier_logprob", s) for s in args.seeds for a in args.algorithms]
    plan += [(a, "ink", s) for s in (args.ink_seeds if args.ink_seeds is not None else args.seeds)
             for a in args.algorithms]
    multi = [] if args.multi_algorithm == "none" else [
        run_one(args.multi_algorithm, "+".join(MULTI_REWARD), s, args, combine)
        for s in args.seeds for combine in ("weighted_sum", "marble")]
    for run in multi:
        first, last = run["curve"][0], run["curve"][-1]
        print(f"{run['combine']:>18} {run['algorithm']:>13} seed {run['seed']}: "
              + ", ".join(f"{n} {first[n]:.4f} -> {last[n]:.4f}" for n in MULTI_REWARD)
              + f", FD {first['frechet_distance']:.2f} -> {last['frechet_distance']:.2f}", flush=True)
    for algo, reward, seed in plan:
        run = run_one(algo, reward, seed, args)
        first, last = run["curve"][0], run["curve"][-1]
        print(f"{reward:>18} {algo:>13} seed {seed}: reward {first[reward]:.4f} -> {last[reward]:.4f}, "
              f"FD {first['frechet_distance']:.2f} -> {last['frechet_distance']:.2f}, "
              f"acc {first['accuracy']:.3f} -> {last['accuracy']:.3f}, {run['train_wall_s']:.1f} s", flush=True)
        runs.append(run)
    result = {"config": vars(args), "samples_per_rollout_batch": args.group_size * args.groups,
              "summary": summarise(runs), "two_rewards": summarise_multi(multi) if multi else None,
              "runs": runs + multi, "benchmark_wall_s": time.perf_counter() - t0}
    write_result("rl_digits", result, args.out)


if __name__ == "__main__":
    main()

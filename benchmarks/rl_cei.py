"""RL on Coulomb explosion imaging: held-out MAE and physics round trip before and after RL, per algorithm.

A sweep of `pipelines/cei_rl.yaml` over the RL algorithm x seeds (`diffpipe sweep`, through the shared
harness), in one artifact root: the data, the pretrained flow-matching model and its "before" samples depend
only on the seed, so every algorithm fine-tunes the same checkpoint (the sweep computes it once per seed)
for the same number of rollout batches. Flow-GRPO makes two updates per rollout batch, so it gets twice the
optimizer steps, in a second sweep on the same root (its pretrains are cache hits). The reward is
`physics_round_trip`; the metrics are the evaluate stage's on held-out molecules (one draw per event, and
the mean of the draws); the RL wall time is the rl stage's, read from the store's index. Cells run one stage
at a time (`runtime.max_parallel_stages=1`, --parallel to change it) so the wall times are not shared.
Prints and writes benchmarks/results/rl_cei.json.

    python benchmarks/rl_cei.py --seeds 3
    python benchmarks/rl_cei.py --quick        # a smoke run of minutes (tiny steps), written to a temp folder
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from harness import REPO, open_benchmark, parser, run_sweep, write_result

SPEC = REPO / "pipelines" / "cei_rl.yaml"
ALGORITHMS = {
    # CPU-sized options; everything else is the schema's reference default
    "flow_grpo": {"algorithm": "flow_grpo", "sampler_steps": 8},
    "diffusion_nft": {"algorithm": "diffusion_nft", "sampler_steps": 8, "train_timesteps": 4},
    "awm": {"algorithm": "awm", "sampler_steps": 8, "timesteps_per_sample": 4},
    "ddrl": {"algorithm": "ddrl", "sampler_steps": 8, "timesteps_per_sample": 4},
}
METRICS = ("mae_frame_bohr", "mae_kabsch_bohr", "rmsd_bohr", "momentum_rel_error", "coverage_0.9")
QUICK = ["stages.diffusion.steps=40", "stages.diffusion.checkpoint_every=40", "data.geometries_per_molecule=4",
         "stages.sample_diffusion.num_samples=40", "stages.sample_rl.num_samples=40", "stages.rl.group_size=4",
         "stages.rl.groups_per_step=2"]
"""--quick: a smoke run (tiny data, 40 pretraining steps, small rollout batches), not a measurement."""


def default_root(quick: bool) -> Path:
    """The artifact root of these runs (and of rl_cei_drift.py's, which reuses their data and pretraining)."""
    return Path(tempfile.gettempdir()) / ("diffpipe_rl_cei_quick" if quick else "diffpipe_rl_cei")


def sweep_algorithms(root: Path, algorithms: list[str], seeds: int, rollouts: int, parallel: int,
                     extra: list[str]) -> list[dict]:
    """The cells of the sweeps (one per number of updates per rollout batch) over `algorithms` x seeds."""
    records = []
    for updates in sorted({2 if a == "flow_grpo" else 1 for a in algorithms}):
        mine = [a for a in algorithms if (2 if a == "flow_grpo" else 1) == updates]
        overrides = [f"storage.root={root}", f"runtime.max_parallel_stages={parallel}",
                     f"stages.rl.steps={rollouts * updates}", f"stages.rl.checkpoint_every={rollouts * updates}",
                     *extra]
        done = run_sweep(SPEC, {"stages.rl.algorithm": [ALGORITHMS[a] for a in mine]}, seeds, overrides,
                         root / f"sweep{updates}")
        print(f"sweep of {mine} x {seeds} seeds: {done.wall_s:.0f} s", flush=True)
        for row in done.report["cells"]:
            nodes = done.cells[row["cell"]]
            records.append(record(row["params"]["stages.rl.algorithm"]["algorithm"], row["seed"], nodes))
    return records


def record(algorithm: str, seed: int, nodes: dict[str, dict]) -> dict:
    """One cell: reward, samples, RL wall time, and the held-out scores before and after RL."""
    rl = nodes["rl"]["metrics"]
    out = {"seed": seed, "algorithm": algorithm, "reward": rl["reward/physics_round_trip"],
           "samples_generated": rl["samples_generated"], "rl_wall_s": rl["train_wall_s"],
           "before": scores(nodes["evaluate_diffusion"]), "after": scores(nodes["evaluate_rl"])}
    b, a = out["before"]["one_draw"], out["after"]["one_draw"]
    print(f"seed {seed} {algorithm:>13}: MAE {b['mae_frame_bohr']:.4f} -> {a['mae_frame_bohr']:.4f} Bohr, "
          f"round trip {b['momentum_rel_error']:.4f} -> {a['momentum_rel_error']:.4f}, "
          f"reward {out['reward']['first']:.4f} -> {out['reward']['last']:.4f}, {out['rl_wall_s']:.0f} s", flush=True)
    return out


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
    """Sweep every algorithm over the seeds and write the JSON."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, default=3, help="seeds per algorithm (runtime.seed 0, 1, ...)")
    options.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS))
    options.add_argument("--rollouts", type=int, default=None, help="rollout batches per run (default 100)")
    options.add_argument("--parallel", type=int, default=1, help="runtime.max_parallel_stages of the sweeps")
    options.add_argument("--root", type=Path, default=None,
                         help="artifact root, reused as a cache by later runs (default: one under the temp folder)")
    args = open_benchmark(options.parse_args())
    rollouts = args.rollouts or (2 if args.quick else 100)
    root = args.root or default_root(args.quick)
    t0 = time.perf_counter()
    runs = sweep_algorithms(root, args.algorithms, args.seeds, rollouts, args.parallel, QUICK if args.quick else [])
    result = {"spec": "pipelines/cei_rl.yaml", "config": {**vars(args), "rollouts": rollouts, "root": str(root),
                                                         "out": str(args.out)},
              "overrides": QUICK if args.quick else [], "summary": summarise(runs), "runs": runs,
              "benchmark_wall_s": time.perf_counter() - t0}
    write_result("rl_cei", result, args.out)


if __name__ == "__main__":
    main()

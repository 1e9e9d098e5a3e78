"""Inference-time search on Coulomb explosion imaging: physics round-trip reward and held-out MAE against NFE.

A sweep of the shipped CEI quick profile (`pipelines/cei.yaml`, `diffpipe sweep` through the shared harness)
over the `sample_diffusion` stage's `search:` block x its `seed`, in one artifact root: the data, the flow-
matching model (runtime seed 0) and the regression baseline are computed once and shared by every cell, so
each method searches the same checkpoint. Methods at budgets B in --budgets (the blocks of
benchmarks/search_digits.py): best_of_n (N = B Euler ODE trajectories from N noises; B = 1 is plain sampling),
best_of_n_sde (N = B trajectories of the SDE that FK steering and DTS sample with, at their default noise
level: the control that separates searching from SDE sampling), fk_steering with the max potential (B
particles, SDE) and tree_search DTS / DTS* (B rollouts), each about B x steps NFE per sample on a `steps`-step
grid. Reward: `physics_round_trip` (minus the relative momentum error of the geometry re-exploded with the
observed charges; it needs no true geometry, so it is a fair test-time reward on held-out events). Quality:
the evaluate stage's held-out MAE against the true geometry (one draw per event, in the aligned frame and
after Kabsch alignment), RMSD, and its round-trip error. Seeds: the sample stage's `seed` (initial and SDE
noise), one model. Cells run one stage at a time (`runtime.max_parallel_stages=1`) so wall times are not
shared. Prints and writes benchmarks/results/search_cei.json.

    python benchmarks/search_cei.py                 # 3 seeds, budgets 1 4 16
    python benchmarks/search_cei.py --quick         # a smoke run of minutes, written to a temp folder
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from harness import REPO, open_benchmark, parser, run_sweep, write_result
from search_digits import cells_by_tag, searches, summarise

SPEC = REPO / "pipelines" / "cei.yaml"
STAGE = "stages.sample_diffusion"
REWARD = "physics_round_trip"
METHODS = ("best_of_n", "best_of_n_sde", "fk_max", "dts", "dts_star")
KEYS = ("reward", "nfe_per_sample", "mae_frame_bohr", "mae_kabsch_bohr", "rmsd_bohr", "momentum_rel_error",
        "search_wall_s")
QUICK = ["stages.diffusion.steps=40", "stages.diffusion.checkpoint_every=40", "stages.baseline.steps=20",
         "stages.baseline.checkpoint_every=20", "data.geometries_per_molecule=4"]
"""--quick: a smoke run (tiny data, 40 pretraining steps), not a measurement."""


def record(tag: str, seed: int, nodes: dict[str, dict]) -> dict:
    """One cell: the search's reward, NFE and wall time, and the held-out scores of one draw per event."""
    sampled, scored = nodes["sample_diffusion"]["metrics"], nodes["evaluate_diffusion"]["metrics"]
    method, budget = tag.rsplit("_b", 1)
    one = scored["sample"]["overall"]
    row = {"method": method, "budget": int(budget), "seed": seed, "reward": sampled["search_reward_mean"],
           "nfe_per_sample": sampled["nfe_per_sample"], "search_wall_s": sampled["search_wall_s"],
           "flops_per_evaluation": sampled["flops_per_evaluation"],
           **{k: one[k] for k in KEYS if k in one}, "coverage_0.9": one.get("coverage_0.9"),
           "mae_frame_bohr_mean_of_draws": scored["sample_mean"]["overall"]["mae_frame_bohr"]}
    print(f"{method:>10} B={budget:<3} seed {seed}: reward {row['reward']:.4f}, NFE {row['nfe_per_sample']:.0f}, "
          f"MAE {row['mae_frame_bohr']:.4f} Bohr, round trip {row['momentum_rel_error']:.4f}, "
          f"{row['search_wall_s']:.0f} s", flush=True)
    return row


def main() -> None:
    """Sweep every (method, budget) x seed over the CEI spec and write the JSON."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sample stage seeds")
    options.add_argument("--budgets", type=int, nargs="+", default=None, help="default 1 4 16 (--quick: 1 2)")
    options.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    options.add_argument("--events", type=int, default=None, help="held-out events (default 300, as the baseline)")
    options.add_argument("--draws", type=int, default=2, help="samples_per_condition of the sample stage")
    options.add_argument("--steps", type=int, default=8, help="steps of the sampler grid")
    options.add_argument("--root", type=Path, default=None, help="artifact root, reused as a cache by later runs")
    args = open_benchmark(options.parse_args())
    budgets = args.budgets or ([1, 2] if args.quick else [1, 4, 16])
    events = args.events or (16 if args.quick else 300)
    root = args.root or Path(tempfile.gettempdir()) / ("diffpipe_search_cei_quick" if args.quick else
                                                       "diffpipe_search_cei")
    blocks = searches(budgets, REWARD, tuple(args.methods))
    overrides = [f"storage.root={root}", "runtime.max_parallel_stages=1", f"{STAGE}.num_samples={events}",
                 f"{STAGE}.samples_per_condition={args.draws}", f"{STAGE}.batch_size={events * args.draws}",
                 f"{STAGE}.scheduler.steps={args.steps}", *(QUICK if args.quick else [])]
    t0 = time.perf_counter()
    done = run_sweep(SPEC, {f"{STAGE}.search": list(blocks.values()), f"{STAGE}.seed": args.seeds}, 1, overrides,
                     root / "sweep")
    runs = [record(tag, seed, nodes) for tag, seed, nodes in cells_by_tag(done, blocks, STAGE)]
    baseline = next(iter(done.cells.values()))["evaluate_baseline"]["metrics"]["sample"]["overall"]
    result = {"spec": "pipelines/cei.yaml", "overrides": overrides, "searches": blocks,
              "config": {**vars(args), "budgets": budgets, "events": events, "root": str(root), "out": str(args.out)},
              "summary": summarise(runs, KEYS, "mae_frame_bohr", "mae"),
              "regression_baseline": {k: baseline[k] for k in ("mae_frame_bohr", "mae_kabsch_bohr", "rmsd_bohr",
                                                               "momentum_rel_error")},
              "runs": runs, "sweep_wall_s": done.wall_s, "benchmark_wall_s": time.perf_counter() - t0}
    write_result("search_cei", result, args.out)


if __name__ == "__main__":
    main()

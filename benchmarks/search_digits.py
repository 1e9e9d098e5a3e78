"""Inference-time search on digits: reward and Frechet distance against NFE, each method vs best-of-N.

A sweep of the shipped digits spec (`pipelines/digits.yaml`, `diffpipe sweep` through the shared harness)
with a small UNet (16/32 channels, pretrained once at runtime seed 0) over the `sample` stage's
`search:` block x its `seed`; the spec's `evaluate` stage scores every cell. All cells share one
artifact root, so every method searches the same checkpoint.

Methods at budgets B in --budgets (NFE per sample about B x steps on a `steps`-step grid): best_of_n
(N = B Euler ODE trajectories from N noises; B = 1 is plain sampling), fk_steering with the max and the
difference potential (B particles, SDE), tree_search DTS and DTS* (B rollouts). Reward: the digits
classifier's log-probability of the requested class (`classifier_logprob`); beside it the evaluate
stage's Frechet distance in the classifier's features (reward hacking shows as FD rising) and
classifier accuracy. Seeds: the sample stage's `seed` (initial noise and SDE noise), one model. Cells
run one stage at a time (`runtime.max_parallel_stages=1`) so wall times are not shared.

    python benchmarks/search_digits.py [--seeds 0 1 2] [--budgets 1 4 8 16] [--pretrain-steps 800]
    python benchmarks/search_digits.py --quick      # a smoke run of minutes, written to a temp folder
Writes benchmarks/results/search_digits.json, one entry per --pretrain-steps (a briefly pretrained
model leaves the classifier reward room to rise; a well-trained one saturates it).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from harness import REPO, environment, open_benchmark, parser, run_sweep, write_result

from diffpipe.schemas.search import FKSteering, TreeSearch

SPEC = REPO / "pipelines" / "digits.yaml"
STAGE = "stages.sample"
REWARD = "classifier_logprob"
SDE_NOISE = FKSteering.model_fields["noise_level"].default
assert TreeSearch.model_fields["noise_level"].default == SDE_NOISE
"""best_of_n_sde: best-of-N with the SDE noise FK steering and DTS sample with (their default), so the
comparison with them is not also one of ODE against SDE sampling."""
SMALL_UNET = "{arch: unet2d, block_out_channels: [16, 32], norm_num_groups: 8, layers_per_block: 1}"


def digits_overrides(root: Path, pretrain_steps: int, samples: int, steps: int) -> list[str]:
    """`--set` options of the digits spec for the search benchmarks: the small UNet pretrained for
    `pretrain_steps`, a sample stage of `samples` draws in one batch on a `steps`-step grid, domain metrics,
    one stage at a time, artifacts under `root` (shared with chords_digits.py)."""
    return [f"storage.root={root}", "runtime.device=cpu", "runtime.max_parallel_stages=1", f"model={SMALL_UNET}",
            f"stages.pretrain.steps={pretrain_steps}", "stages.pretrain.batch_size=64",
            f"stages.pretrain.checkpoint_every={pretrain_steps}", f"{STAGE}.num_samples={samples}",
            f"{STAGE}.batch_size={samples}", f"{STAGE}.scheduler.steps={steps}", "stages.evaluate.metrics=[domain]"]


def methods(budget: int, reward: str = REWARD) -> dict[str, dict]:
    """Search blocks of every method at one budget with `reward` (shared with search_cei.py)."""
    return {
        "best_of_n": {"method": "best_of_n", "reward": reward, "particles": budget},
        "best_of_n_sde": {"method": "best_of_n", "reward": reward, "particles": budget, "noise_level": SDE_NOISE},
        "fk_max": {"method": "fk_steering", "reward": reward, "particles": max(2, budget), "potential": "max"},
        "fk_difference": {"method": "fk_steering", "reward": reward, "particles": max(2, budget),
                          "potential": "difference"},
        "dts": {"method": "tree_search", "reward": reward, "rollouts": budget, "variant": "dts"},
        "dts_star": {"method": "tree_search", "reward": reward, "rollouts": budget, "variant": "dts_star"},
    }


def searches(budgets: list[int], reward: str = REWARD, names: tuple[str, ...] | None = None) -> dict[str, dict]:
    """`<method>_b<budget>` -> search block (best-of-N alone at budget 1: plain sampling)."""
    return {f"{name}_b{b}": block for b in budgets for name, block in methods(b, reward).items()
            if (names is None or name in names) and (b > 1 or name == "best_of_n")}


def cells_by_tag(done, blocks: dict[str, dict], stage: str = STAGE) -> list[tuple[str, int, dict]]:
    """(tag, seed, the cell's stages) of every cell of a search x seed sweep."""
    tags = {json.dumps(block, sort_keys=True): tag for tag, block in blocks.items()}
    return [(tags[json.dumps(row["params"][f"{stage}.search"], sort_keys=True)], row["params"][f"{stage}.seed"],
             done.cells[row["cell"]]) for row in done.report["cells"]]


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
    out = {"table": table, "vs_best_of_n": against(table, "best_of_n", quality, label)}
    if "best_of_n_sde" in table:
        out["vs_best_of_n_sde"] = against(table, "best_of_n_sde", quality, label)
    return out


def against(table: dict[str, dict[int, dict]], base: str, quality: str, label: str) -> dict:
    """Each other method's reward and `quality` differences with `base` at equal budgets, its NFE ratio, and
    the NFE at which it first reaches `base`'s reward at `base`'s top budget."""
    ref = table[base]
    comparisons = {}
    for method, by_budget in table.items():
        if method == base:
            continue
        comparisons[method] = {
            budget: {f"reward_minus_{base}": v["reward"]["mean"] - ref[budget]["reward"]["mean"],
                     f"{label}_minus_{base}": v[quality]["mean"] - ref[budget][quality]["mean"],
                     f"nfe_ratio_to_{base}": v["nfe_per_sample"]["mean"] / ref[budget]["nfe_per_sample"]["mean"]}
            for budget, v in by_budget.items() if budget in ref}
        top = max(ref)
        reached = [b for b, v in sorted(by_budget.items()) if v["reward"]["mean"] >= ref[top]["reward"]["mean"]]
        comparisons[method][f"nfe_to_reach_{base}_at_top_budget"] = (
            None if not reached else by_budget[reached[0]]["nfe_per_sample"]["mean"])
        comparisons[method][f"{base}_nfe_at_top_budget"] = ref[top]["nfe_per_sample"]["mean"]
    return comparisons


def record(tag: str, seed: int, nodes: dict[str, dict]) -> dict:
    """One cell: the search's reward, NFE and wall time, and the evaluate stage's FD and accuracy."""
    sampled, scored = nodes["sample"]["metrics"], nodes["evaluate"]["metrics"]
    method, budget = tag.rsplit("_b", 1)
    row = {"method": method, "budget": int(budget), "seed": seed, "reward": sampled["search_reward_mean"],
           "nfe_per_sample": sampled["nfe_per_sample"], "search_wall_s": sampled["search_wall_s"],
           "flops_per_evaluation": sampled["flops_per_evaluation"],
           "frechet_distance": scored["model"]["frechet_distance"],
           "classifier_accuracy": scored["model"]["classifier_accuracy"],
           "data_floor_frechet_distance": scored["data_floor"]["frechet_distance"]}
    print(f"{method:>14} B={budget:<3} seed {seed}: reward {row['reward']:.3f}, NFE {row['nfe_per_sample']:.0f}, "
          f"FD {row['frechet_distance']:.2f}, acc {row['classifier_accuracy']:.3f}", flush=True)
    return row


def main() -> None:
    """Sweep every (method, budget) x seed over the digits spec; print and write JSON."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sample stage seeds")
    options.add_argument("--budgets", type=int, nargs="+", default=None, help="default 1 4 8 16 (--quick: 1 2)")
    options.add_argument("--steps", type=int, default=10, help="steps of the sampler grid")
    options.add_argument("--samples", type=int, default=None, help="samples per stage (default 100, --quick 20)")
    options.add_argument("--pretrain-steps", type=int, default=None, help="default 800 (--quick 20)")
    options.add_argument("--root", type=Path, default=None, help="artifact root, reused as a cache by later runs")
    args = open_benchmark(options.parse_args())
    budgets = args.budgets or ([1, 2] if args.quick else [1, 4, 8, 16])
    samples, pretrain = args.samples or (20 if args.quick else 100), args.pretrain_steps or (20 if args.quick else 800)
    root = args.root or Path(tempfile.gettempdir()) / ("diffpipe_search_digits_quick" if args.quick else
                                                       "diffpipe_search_digits")
    blocks = searches(budgets)
    overrides = digits_overrides(root, pretrain, samples, args.steps)
    t0 = time.perf_counter()
    done = run_sweep(SPEC, {f"{STAGE}.search": list(blocks.values()), f"{STAGE}.seed": args.seeds}, 1, overrides,
                     root / "sweep")
    runs = [record(tag, seed, nodes) for tag, seed, nodes in cells_by_tag(done, blocks)]
    result = {"spec": "pipelines/digits.yaml", "overrides": overrides, "searches": blocks,
              "config": {**vars(args), "budgets": budgets, "samples": samples, "pretrain_steps": pretrain,
                         "root": str(root), "out": str(args.out)},
              "summary": summarise(runs), "runs": runs, "sweep_wall_s": done.wall_s,
              "benchmark_wall_s": time.perf_counter() - t0, "environment": environment()}
    path = args.out / "search_digits.json"  # one entry per pretraining length, kept across runs
    everything = json.loads(path.read_text()) if path.exists() else {}
    everything = {k: v for k, v in everything.items() if k.startswith("pretrain_steps=")}
    everything[f"pretrain_steps={pretrain}"] = result
    write_result("search_digits", everything, args.out)


if __name__ == "__main__":
    main()

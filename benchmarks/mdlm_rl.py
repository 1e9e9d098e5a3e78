"""Tiny MDLM on Countdown and Sudoku: pretrain, then every discrete RL algorithm at equal rollouts, as a sweep.

A `diffpipe sweep` of the shipped spec (pipelines/countdown.yaml or sudoku.yaml) over the rl stage's algorithm
x `runtime.seed`, through the shared harness (`benchmarks/harness.py`): the data (its own `data.seed`, shared
by every cell), the pretrain and its "before" evaluation depend only on the seed, so every algorithm
fine-tunes the same checkpoint (the sweep computes it once per seed; `stage_executions` counts executed and cached
cells per stage), with `num_iterations` pinned to 2 so that every algorithm gets the same rollouts of the
spec's group_size x groups_per_step (the spec's budget unless --rollouts). Held-out greedy accuracy and reward
before and after RL are the spec's evaluate_pretrained and evaluate stages; the rl stage's own metrics
(rollout reward and accuracy, zero-variance groups, forwards per rollout, wall time) come from the store's
index. Analyses of the published checkpoints, read from the store: the pretrained model's sampled accuracy and
pass@8 on the held-out split (RL's headroom), what guessing scores there (Countdown: a uniformly drawn
expression over the given numbers, exact by enumeration), greedy accuracy on the training problems RL draws
from before and after RL (does a gain transfer to held-out problems?), and ELBO estimator bias, variance and
MSE against the exact ELBO (mask enumeration) at equal forward budgets. Prints and merges into
benchmarks/results/mdlm_rl.json (one key per task, seed and option set; keys ending /sweep were measured this
way, /stage by an earlier version of this benchmark that drove the rl stage's loop in its own process, the
others with an earlier loop of this benchmark's own). Cells run one stage at a time
(`runtime.max_parallel_stages=1`, --parallel to change it) so RL wall times are not shared.

    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 1 2
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --rollouts 1536 \
        --set 'stages.rl.rewards=[{name: exact_verifier}]'    # any field of the spec, e.g. stages.rl.lr=5e-4
    python benchmarks/mdlm_rl.py --quick --algorithms coupled_grpo   # smoke run, written to a temp folder
"""

from __future__ import annotations

import fcntl
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from harness import REPO, environment, open_benchmark, parser, run_sweep, stage_counts

from diffpipe.schemas import ArtifactRef
from diffpipe.schemas.rl_discrete import DISCRETE_ALGORITHMS
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.data.reasoning import MASK, all_countdown_expressions, reward_fn_for
from diffpipe.tasks.mdlm import MaskPlan, draw_elbo_plan, masked_token_logps, plan_estimate, sample_completions
from diffpipe.tasks.mdlm.elbo import exact_elbo_from_sums, mask_size_sums
from diffpipe.tasks.registry import get_domain
from diffpipe.tasks.sample import load_checkpoint

ALGORITHM_NAMES = [cls.model_fields["algorithm"].default for cls in DISCRETE_ALGORITHMS]
"""Every discrete algorithm, in the schema's order."""
NUM_ITERATIONS = 2
"""Updates per rollout batch of every algorithm (equal rollouts for equal steps), as the shipped specs pin it."""
PRACTISED_SHOWN = 200
"""How many of the problems RL draws from are scored before and after RL (the held-out split's size)."""
QUICK = ["data.num_train=64", "data.num_test=16", "stages.pretrain.steps=30", "stages.pretrain.checkpoint_every=30",
         "stages.pretrain.warmup_steps=5", "stages.sample_pretrained.num_samples=16", "stages.sample.num_samples=16",
         "stages.rl.steps=2", "stages.rl.checkpoint_every=2", "stages.rl.log_every=2"]
"""--quick: a smoke run (tiny splits, 30 pretraining steps, one rollout batch), not a measurement."""


def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and completion token tensors of a split."""
    return torch.from_numpy(ds.prompt.values), torch.from_numpy(ds.completion.values)


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: str, ds, block_length: int) -> dict[str, float]:
    """Greedy held-out accuracy and mean reward (steps = completion length)."""
    prompts, completions = tensors(ds)
    length = completions.shape[1]
    samples = sample_completions(model, prompts, length, MASK, steps=length, block_length=block_length)
    rewards, correct = reward_fn_for(task)(prompts, samples)
    return {"accuracy": float(correct.float().mean()), "reward": float(rewards.mean())}


@torch.no_grad()
def headroom(model: torch.nn.Module, task: str, ds, block_length: int, k: int = 8, seed: int = 0) -> dict[str, float]:
    """Sampled (temperature 1) accuracy and pass@k on a split: how much RL could gain by sharpening."""
    prompts, completions = tensors(ds)
    repeated = prompts.repeat_interleave(k, 0)
    samples = sample_completions(model, repeated, completions.shape[1], MASK, steps=completions.shape[1],
                                 block_length=block_length, temperature=1.0,
                                 generator=torch.Generator().manual_seed(seed))
    correct = reward_fn_for(task)(repeated, samples)[1].view(-1, k).float()
    return {"sampled_accuracy": float(correct.mean()), f"pass@{k}": float(correct.max(1).values.mean())}


def practised(ds):
    """The first PRACTISED_SHOWN training problems RL draws its prompts from (scored before and after RL)."""
    return ds.isel(problem=slice(0, PRACTISED_SHOWN))


def countdown_chance(ds, k: int = 8) -> dict[str, float]:
    """Accuracy and pass@k of guessing: one expression drawn uniformly from all over the given numbers."""
    hit_rates = []
    for numbers, target in zip(ds.numbers.values, ds.target.values, strict=True):
        expressions = all_countdown_expressions([int(n) for n in numbers if n >= 0])
        hit_rates.append(np.mean([e.value is not None and e.value == target for e in expressions]))
    hits = np.array(hit_rates)
    return {"accuracy": float(hits.mean()), f"pass@{k}": float((1 - (1 - hits) ** k).mean())}


@torch.no_grad()
def elbo_study(model: torch.nn.Module, data: dict, num_sequences: int, replicates: int, seed: int) -> dict:
    """Bias, variance and MSE of each estimator against the exact ELBO at equal forward budgets."""
    prompts, completions = tensors(data["test"])
    prompts, completions = prompts[:num_sequences], completions[:num_sequences]
    num_sequences = len(prompts)  # a split smaller than asked (--quick)
    length = completions.shape[1]
    exact = exact_elbo_from_sums(mask_size_sums(model, prompts, completions, MASK)).double()
    generator = torch.Generator().manual_seed(seed)
    arms = [(f"mc-{k}", "mc", k, {}) for k in (1, 2, 3, 4, 8)]
    arms += [(f"stratified-{k}", "stratified", k, {}) for k in (2, 3, 4, 8)]
    arms += [(f"antithetic-{k}", "antithetic", k, {}) for k in (2, 4, 8)]
    arms += [(f"gauss{k}-count", "quadrature", k, {"rule": "gauss", "fixed_count": True})
             for k in (1, 2, 3, 4, 8)]
    arms += [(f"gauss{k}-bernoulli", "quadrature", k, {"rule": "gauss", "fixed_count": False})
             for k in (1, 2, 3, 4)]
    arms += [("simpson3-count", "quadrature", 3, {"rule": "simpson", "fixed_count": True}),
             ("simpson3-bernoulli", "quadrature", 3, {"rule": "simpson", "fixed_count": False})]
    rows = {}
    for name, estimator, budget, kwargs in arms:
        plan = draw_elbo_plan(estimator, num_sequences * replicates, length, budget, generator, **kwargs)
        values = plan_estimate(model, prompts.repeat(replicates, 1), completions.repeat(replicates, 1), plan,
                               MASK)
        values = values.double().view(replicates, num_sequences)
        bias = values.mean(0) - exact
        variance = values.var(0)
        rows[name] = {"forwards": budget, "bias": float(bias.mean()), "abs_bias": float(bias.abs().mean()),
                      "variance": float(variance.mean()), "mse": float((variance + bias ** 2).mean())}
    return {"completion_length": length, "sequences": num_sequences, "replicates": replicates,
            "exact_elbo_mean": float(exact.mean()), "estimators": rows,
            "time_share_of_mc1_variance": time_share(model, prompts, completions)}


@torch.no_grad()
def time_share(model: torch.nn.Module, prompts: torch.Tensor, completions: torch.Tensor) -> float:
    """Exact share of the single-draw 'mc' variance due to the random mask count (time), by enumeration."""
    batch, length = completions.shape
    subsets = [[i for i in range(length) if code >> i & 1] for code in range(1, 2 ** length)]
    masks = torch.zeros(len(subsets), length, dtype=torch.bool)
    for row, subset in enumerate(subsets):
        masks[row, subset] = True
    plan = MaskPlan(masks.unsqueeze(1).expand(-1, batch, -1), torch.ones(len(subsets), batch))
    per_mask = (masked_token_logps(model, prompts, completions, plan, MASK) * plan.masks).sum(-1).double()
    sizes = masks.sum(-1)
    scaled = per_mask * (length / sizes.double()).unsqueeze(1)
    means = torch.stack([scaled[sizes == s].mean(0) for s in range(1, length + 1)])
    within = torch.stack([scaled[sizes == s].var(0, unbiased=False) for s in range(1, length + 1)])
    between = means.var(0, unbiased=False)
    return float((between / (between + within.mean(0))).mean())


def save_run(key: str, run: dict, config: dict, results: Path) -> None:
    """Merge one run into the results JSON (re-read just before writing; algorithms of an earlier run of the same
    key are kept unless this run repeats them), so invocations that split the algorithms between them add up."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merge_run(key, run, config, results)


def merge_run(key: str, run: dict, config: dict, path: Path) -> None:
    """Read the results JSON, add the run to it and replace it atomically (the caller holds the lock)."""
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    results["config"] = config
    earlier = results["runs"].get(key, {}).get("algorithms", {})
    run["algorithms"] = {**earlier, **run["algorithms"]}
    before = max(run["before"]["accuracy"], 1e-9)
    run["accuracy_ratio_after_over_before"] = {a: r["after"]["accuracy"] / before for a, r in run["algorithms"].items()}
    results["runs"][key] = run
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(results, indent=1))
    temporary.replace(path)


def sweep_options(args, raw: dict) -> tuple[dict, list[str]]:
    """The grid (every algorithm at the spec's block length, NUM_ITERATIONS updates per batch) and the overrides
    of every cell."""
    rl = next(s for s in raw["stages"] if s["name"] == "rl")
    block = rl["algorithm"].get("block_length")
    grid = {"stages.rl.algorithm": [{"algorithm": a, "num_iterations": NUM_ITERATIONS, "block_length": block}
                                    for a in args.algorithms], "runtime.seed": args.seeds}
    per_batch = rl["group_size"] * rl["groups_per_step"]
    overrides = ["runtime.device=cpu", f"runtime.max_parallel_stages={args.parallel}",
                 *(QUICK if args.quick else [])]
    if args.rollouts:
        steps = math.ceil(args.rollouts / per_batch) * NUM_ITERATIONS
        overrides += [f"stages.rl.steps={steps}", f"stages.rl.checkpoint_every={steps}"]
    return grid, [*overrides, *args.set]


def artifact(store: ArtifactStore, node: dict) -> Path:
    """The folder of a stage's published artifact (from its `diffpipe status` entry)."""
    return store.local_path(ArtifactRef.model_validate(node["artifact"]))


def seed_record(task: str, store: ArtifactStore, cells: list[tuple[dict, dict]], args, block_length: int,
                init_weights: str) -> dict:
    """One seed: the pretrain and its held-out scores, headroom, chance, ELBO study, then every algorithm."""
    nodes = cells[0][1]
    domain = get_domain(task)
    data = {split: domain.load_split(artifact(store, nodes["data"]), split) for split in ("train", "test")}
    model, _, _ = load_checkpoint(artifact(store, nodes["pretrain"]), init_weights)
    pretrain = nodes["pretrain"]["metrics"]
    run = {"pretrain": {k: v for k, v in pretrain.items() if isinstance(v, int | float | str | None)},
           "before": nodes["evaluate_pretrained"]["metrics"]["model"],
           "before_on_rl_problems": evaluate(model, task, practised(data["train"]), block_length),
           "headroom": headroom(model, task, data["test"], block_length), "rl_problems": data["train"].sizes["problem"],
           "algorithms": {}}
    if task == "countdown":
        run["chance"] = countdown_chance(data["test"])
    print(task, cells[0][0]["seed"], "pretrained", run["before"], run["headroom"], flush=True)
    if task == "countdown" and not args.skip_elbo:
        run["elbo_study"] = elbo_study(model, data, 24, args.elbo_replicates, cells[0][0]["seed"])
    for row, nodes in cells:
        rl = nodes["rl"]["metrics"]
        after_model, _, _ = load_checkpoint(artifact(store, nodes["rl"]), "ema")  # what the stage publishes
        entry = {"after": nodes["evaluate"]["metrics"]["model"], "wall_seconds": rl["train_wall_s"],
                 "after_on_rl_problems": evaluate(after_model, task, practised(data["train"]), block_length),
                 "updates": rl["rollout_batches"], "rollouts": rl["samples_generated"],
                 "num_iterations": NUM_ITERATIONS, "train_reward": rl["train_reward"],
                 "train_accuracy": rl["train_accuracy"], "zero_std_ratio": rl["zero_std_ratio"],
                 "forwards_per_rollout": rl["forwards_per_rollout"],
                 "seconds_per_update": rl["train_wall_s"] / rl["rollout_batches"]}
        algorithm = row["params"]["stages.rl.algorithm"]["algorithm"]
        run["algorithms"][algorithm] = entry
        print(task, row["seed"], algorithm, json.dumps(entry), flush=True)
    return run


def run_key(task: str, seed: int, overrides: list[str], rollouts: int) -> str:
    """The results key of a run: task, seed, rollouts and every --set override; '/sweep' last."""
    return f"{task}/seed{seed}/rollouts{rollouts}" + "".join(f"/{o}" for o in overrides) + "/sweep"


def main() -> None:
    """Sweep every algorithm over the seeds for each task, analyse the published checkpoints, merge the JSON."""
    options = parser(__doc__)
    options.add_argument("--tasks", nargs="+", choices=["countdown", "sudoku"], default=["countdown"])
    options.add_argument("--seeds", type=int, nargs="+", default=[0], help="runtime seeds (one pretrain each)")
    options.add_argument("--algorithms", nargs="+", choices=ALGORITHM_NAMES, default=list(ALGORITHM_NAMES))
    options.add_argument("--rollouts", type=int, default=None, help="rollouts per algorithm (default: the spec's)")
    options.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                         help="override a field of every cell, e.g. stages.rl.lr=5e-4 (repeatable)")
    options.add_argument("--elbo-replicates", type=int, default=128)
    options.add_argument("--skip-elbo", action="store_true")
    options.add_argument("--parallel", type=int, default=1, help="runtime.max_parallel_stages of the sweep")
    options.add_argument("--root", type=Path, default=None, help="artifact root (default: a temporary folder)")
    args = open_benchmark(options.parse_args())
    if args.quick:
        args.elbo_replicates = 4
    results = args.out / "mdlm_rl.json"
    config = {"torch_threads": args.threads, "loop": "diffpipe sweep of the shipped spec (keys ending /sweep)",
              "options": "the shipped spec's rl stage, algorithm options the schema's defaults (the references') "
                         f"but num_iterations {NUM_ITERATIONS} and the spec's block_length"}
    for task in args.tasks:
        spec = REPO / "pipelines" / f"{task}.yaml"
        raw = yaml.safe_load(spec.read_text())
        grid, overrides = sweep_options(args, raw)
        rl = next(s for s in raw["stages"] if s["name"] == "rl")
        with tempfile.TemporaryDirectory(prefix="diffpipe-mdlm-rl-") as tmp:
            root = args.root or Path(tmp) / "artifacts"
            t0 = time.perf_counter()
            done = run_sweep(spec, grid, 1, [f"storage.root={root}", *overrides], Path(tmp) / "sweep")
            counts = stage_counts(done.report)
            print(f"{task}: sweep of {len(done.report['cells'])} cells in {done.wall_s:.0f} s, stage executions "
                  f"{counts}", flush=True)
            store = ArtifactStore(str(root))
            by_seed: dict[int, list] = {}
            for row in done.report["cells"]:
                by_seed.setdefault(row["seed"], []).append((row, done.cells[row["cell"]]))
            for seed, cells in by_seed.items():
                run = seed_record(task, store, cells, args, rl["algorithm"]["block_length"],
                                  rl.get("init_weights", "online"))
                rollouts = cells[0][1]["rl"]["metrics"]["samples_generated"]
                run.update(spec=f"pipelines/{task}.yaml", overrides=overrides, rollouts_per_algorithm=rollouts,
                           block_length=rl["algorithm"]["block_length"],
                           sweep={"cells": len(done.report["cells"]), "wall_s": done.wall_s,
                                  "stage_executions": counts, "benchmark_wall_s": time.perf_counter() - t0},
                           environment=environment())
                save_run(run_key(task, seed, args.set, rollouts), run, config, results)
    print(f"wrote {results}")


if __name__ == "__main__":
    main()

"""Tiny MDLM on Countdown and Sudoku: pretrain, then each discrete RL algorithm at equal rollouts.

Also: the pretrained model's sampled accuracy and pass@8 on the held-out split (RL's headroom), what
guessing scores there (Countdown: a uniformly drawn expression over the given numbers, exact by
enumeration), greedy accuracy on the training problems RL draws from before and after RL (does a gain
transfer to held-out problems?), an optional sharpening probe (RL on a small fixed set of training
problems: the machinery must raise their accuracy even where nothing transfers), ELBO
estimator bias, variance and MSE against the exact ELBO (mask enumeration) at equal forward
budgets, and forward passes per update of each algorithm. Prints and writes
benchmarks/results/mdlm_rl.json (runs of several invocations are merged by task and seed).

    python benchmarks/mdlm_rl.py --tasks countdown sudoku --seeds 0
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --pretrain-steps 4000 --probe-problems 32
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --block-length 8   # decode in one block
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --closeness 0.4    # dense reward beside the verifier
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --algorithms coupled_grpo --set beta=0 \
        --ema-decay 0.99 --eval-every 12288    # override an option, score an EMA, record a held-out curve
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --algorithms coupled_grpo --model d_model=128 \
        num_layers=4 --rollouts-per-update 160    # a larger MDLM, a larger rollout batch
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers.training_utils import EMAModel
from pydantic import TypeAdapter, ValidationError

from diffpipe.schemas.rl_discrete import DISCRETE_ALGORITHMS, DiscreteAlgorithmSpec
from diffpipe.tasks.data.reasoning import (
    EOS,
    MASK,
    VOCAB,
    all_countdown_expressions,
    build_countdown,
    build_sudoku,
    closeness_completions,
    reward_fn_for,
)
from diffpipe.tasks.mdlm import (
    MaskPlan,
    draw_elbo_plan,
    masked_diffusion_loss,
    masked_token_logps,
    plan_estimate,
    sample_completions,
)
from diffpipe.tasks.mdlm.elbo import exact_elbo_from_sums, mask_size_sums
from diffpipe.tasks.nets.mdlm import MaskedDiffusionTransformer
from diffpipe.tasks.rl.discrete import rl_update
from diffpipe.tasks.training import published_weights

ALGORITHM_NAMES = [cls.model_fields["algorithm"].default for cls in DISCRETE_ALGORITHMS]
"""Every discrete algorithm, in the schema's order."""

RESULTS = Path(__file__).parent / "results" / "mdlm_rl.json"
CACHE = Path("/tmp/diffpipe_mdlm_rl_cache")
TASKS = {
    # block_length: two semi-autoregressive blocks per completion; pretrain steps give a modest accuracy
    "countdown": {"build": lambda s: build_countdown(1500, 200, seed=s), "block_length": 4,
                  "pretrain_steps": 1500},
    "sudoku": {"build": lambda s: build_sudoku(2000, 200, seed=s), "block_length": 8, "pretrain_steps": 600},
}
MODEL = {"d_model": 64, "num_layers": 3, "num_heads": 4}
ROLLOUTS_PER_UPDATE = 48
PRACTISED_SHOWN = 200
"""How many of the problems RL draws from are scored before and after RL (the held-out split's size)."""


def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and completion token tensors of a split."""
    return torch.from_numpy(ds.prompt.values), torch.from_numpy(ds.completion.values)


def model_suffix(architecture: dict, separator: str) -> str:
    """'' for the default MODEL, else e.g. '/d_model=128/num_layers=4' (separator '/'): names caches and keys."""
    return "".join(f"{separator}{name}={value}" for name, value in architecture.items() if MODEL[name] != value)


def pretrain(task: str, data: dict, seed: int, steps: int,
             architecture: dict) -> tuple[MaskedDiffusionTransformer, dict]:
    """Train (or load from the /tmp cache) an MDLM of `architecture` (MODEL's keys) with the masked-diffusion loss."""
    path = CACHE / f"{task}_seed{seed}_steps{steps}{model_suffix(architecture, '_')}"
    prompts, completions = tensors(data["train"])
    if (path / "config.json").exists():
        meta = json.loads((path / "meta.json").read_text())
        return MaskedDiffusionTransformer.from_pretrained(path), meta
    torch.manual_seed(seed)
    model = MaskedDiffusionTransformer(VOCAB.size, prompts.shape[1] + completions.shape[1], MASK, **architecture)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100)
                                                 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, prompts.shape[0], (128,), generator=generator)
        loss = masked_diffusion_loss(model, prompts[idx], completions[idx], MASK, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    meta = {"pretrain_seconds": time.perf_counter() - started, "final_loss": float(loss.detach()),
            "steps": steps, "params": sum(p.numel() for p in model.parameters())}
    model.save_pretrained(path)
    (path / "meta.json").write_text(json.dumps(meta))
    return model, meta


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


RewardFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(prompts, completions) -> (rewards, exactly correct), as `rl_update` takes it."""


def rl_reward_fn(task: str, closeness: float) -> RewardFn:
    """The exact verifier's d1 reward, plus `closeness` x `countdown_closeness` when that weight is positive."""
    verifier = reward_fn_for(task)
    if not closeness:
        return verifier

    def reward_fn(prompts: torch.Tensor, completions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rewards, correct = verifier(prompts, completions)
        dense = closeness_completions(prompts.cpu().numpy(), completions.cpu().numpy())
        return rewards + closeness * torch.from_numpy(dense).float(), correct

    return reward_fn


def run_rl(task: str, base: torch.nn.Module, data: dict, algorithm: str, seed: int, rollout_budget: int,
           block_length: int, lr: float, closeness: float = 0.0, overrides: dict | None = None,
           eval_every: int = 0, ema_decay: float = 0.0, rollouts_per_update: int = ROLLOUTS_PER_UPDATE) -> dict:
    """RL from the pretrained model until `rollout_budget` rollouts; held-out accuracy and wall time.

    `overrides` replace the algorithm's schema defaults (validated by the schema); with `eval_every`, greedy
    held-out accuracy is also recorded every that many rollouts (its time is not counted in the wall time).
    With `ema_decay`, an EMA of the weights (stepped once per rollout batch) is what is scored, as the rl stage
    publishes its EMA; the online weights' scores are kept beside it.
    """
    model, ref = copy.deepcopy(base), copy.deepcopy(base).requires_grad_(False)
    ema = EMAModel(model.parameters(), decay=ema_decay, foreach=True) if ema_decay else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    spec = TypeAdapter(DiscreteAlgorithmSpec).validate_python(
        {"algorithm": algorithm, "block_length": block_length, **(overrides or {})})
    group_size = spec.reference_group_size
    prompts, completions = tensors(data["train"])
    per_update = max(1, rollouts_per_update // group_size)
    reward_fn = rl_reward_fn(task, closeness)
    generator = torch.Generator().manual_seed(1000 + seed)
    rollouts, history, curve, evaluating = 0, [], {}, 0.0
    started = time.perf_counter()
    while rollouts < rollout_budget:
        idx = torch.randint(0, prompts.shape[0], (per_update,), generator=generator)
        stats = rl_update(model, ref, optimizer, prompts[idx], spec, generator, group_size=group_size,
                          reward_fn=reward_fn, completion_length=completions.shape[1], eos_token_id=EOS)
        rollouts += stats["rollouts"]
        history.append(stats)
        if ema is not None:
            ema.step(model.parameters())
        if eval_every and rollouts // eval_every > len(curve):
            tick = time.perf_counter()
            scored = published_weights(model, ema)
            curve[rollouts] = evaluate(scored, task, data["test"], block_length)["accuracy"]
            evaluating += time.perf_counter() - tick
    wall = time.perf_counter() - started - evaluating
    scored = published_weights(model, ema)
    keys = ("sampling_forwards_per_rollout", "scoring_forwards_per_rollout", "grad_forwards_per_rollout")
    quarter = len(history) // 4 or 1
    return {
        "after": evaluate(scored, task, data["test"], block_length), "wall_seconds": wall,
        "after_on_rl_problems": evaluate(scored, task, practised(data["train"]), block_length),
        **({"after_online_weights": evaluate(model, task, data["test"], block_length)} if ema else {}),
        "updates": len(history), "rollouts": rollouts, "group_size": group_size,
        "num_iterations": spec.num_iterations,
        "train_reward_first_quarter": float(np.mean([h["reward_mean"] for h in history[:quarter]])),
        "train_reward_last_quarter": float(np.mean([h["reward_mean"] for h in history[-quarter:]])),
        "zero_std_ratio": float(np.mean([h["zero_std_ratio"] for h in history])),
        "forwards_per_rollout": {k: history[0][k] for k in keys},
        "forwards_per_update": {k.replace("_per_rollout", ""): history[0][k] * history[0]["rollouts"]
                                for k in keys},
        "seconds_per_update": wall / len(history),
        **({"held_out_accuracy_by_rollouts": curve} if curve else {}),
    }


@torch.no_grad()
def elbo_study(model: torch.nn.Module, data: dict, num_sequences: int, replicates: int, seed: int) -> dict:
    """Bias, variance and MSE of each estimator against the exact ELBO at equal forward budgets."""
    prompts, completions = tensors(data["test"])
    prompts, completions = prompts[:num_sequences], completions[:num_sequences]
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


def save_run(key: str, run: dict, config: dict) -> None:
    """Merge one run into the results JSON (re-read just before writing; algorithms of an earlier run of the same
    key are kept unless this run repeats them), so invocations that split the algorithms between them add up."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merge_run(key, run, config)


def merge_run(key: str, run: dict, config: dict) -> None:
    """Read the results JSON, add the run to it and replace it atomically (the caller holds the lock)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    results["config"] = config
    earlier = results["runs"].get(key, {}).get("algorithms", {})
    run["algorithms"] = {**earlier, **run["algorithms"]}
    before = max(run["before"]["accuracy"], 1e-9)
    run["accuracy_ratio_after_over_before"] = {a: r["after"]["accuracy"] / before for a, r in run["algorithms"].items()}
    results["runs"][key] = run
    temporary = RESULTS.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(results, indent=1))
    temporary.replace(RESULTS)


def check_architecture(architecture: dict) -> None:
    """Exit with a message naming the problem when `--model` overrides do not build an MDLM."""
    if set(architecture) - set(MODEL):
        raise SystemExit(f"--model takes {sorted(MODEL)}, got {sorted(set(architecture) - set(MODEL))}")
    try:
        MaskedDiffusionTransformer(VOCAB.size, 8, MASK, **architecture)
    except (AssertionError, TypeError, ValueError, RuntimeError) as error:
        raise SystemExit(f"--model {architecture} does not build an MDLM: {error}") from None


def option_override(item: str) -> tuple[str, object]:
    """'key=value' as a (key, YAML-parsed value) pair for the algorithm schema to validate."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
    return name, yaml.safe_load(value)


def main() -> None:
    """Run the benchmark for the requested tasks and seeds, merge into the JSON results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=["countdown", "sudoku"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHM_NAMES))
    parser.add_argument("--rollouts", type=int, default=1536)
    parser.add_argument("--elbo-replicates", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--skip-elbo", action="store_true")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="default: the task's")
    parser.add_argument("--block-length", type=int, default=None,
                        help="decoding block length of evaluation and rollouts (default: the task's)")
    parser.add_argument("--closeness", type=float, default=0.0,
                        help="Countdown: weight of the countdown_closeness reward added to the verifier's")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override the algorithms' schema options, e.g. beta=0 num_iterations=4")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also record greedy held-out accuracy every this many rollouts")
    parser.add_argument("--ema-decay", type=float, default=0.0,
                        help="score an EMA of the RL weights with this decay per rollout batch (0: the raw weights)")
    parser.add_argument("--model", nargs="+", default=[], metavar="KEY=VALUE",
                        help=f"override the MDLM's architecture {MODEL}, e.g. d_model=128 num_layers=4")
    parser.add_argument("--rollouts-per-update", type=int, default=ROLLOUTS_PER_UPDATE,
                        help="rollouts per rollout batch (rounded down to whole groups, at least one group)")
    parser.add_argument("--probe-problems", type=int, default=0,
                        help="sharpening probe: RL draws from only this many training problems (0: all)")
    args = parser.parse_args()
    overrides = dict(option_override(item) for item in args.set)
    architecture = {**MODEL, **dict(option_override(item) for item in args.model)}
    check_architecture(architecture)
    for algorithm in args.algorithms:  # fail before pretraining, not after it
        try:
            TypeAdapter(DiscreteAlgorithmSpec).validate_python({"algorithm": algorithm, **overrides})
        except ValidationError as error:
            raise SystemExit(f"--set {' '.join(args.set)} does not fit {algorithm}: {error}") from None
    torch.set_num_threads(1)
    config = {"model": MODEL, "rollouts_per_update": ROLLOUTS_PER_UPDATE, "torch_threads": 1,
              "optimizer": "AdamW betas (0.9, 0.99), no weight decay",
              "options": "the rl stage schema's defaults (schemas/rl_discrete.py = the references'), "
                         "block_length per task unless a run's key names one"}
    for task in args.tasks:
        spec = {**TASKS[task], **({"block_length": args.block_length} if args.block_length else {})}
        for seed in args.seeds:
            data = spec["build"](seed)
            model, meta = pretrain(task, data, seed, args.pretrain_steps or spec["pretrain_steps"], architecture)
            rl_data = {**data, "train": data["train"].isel(problem=slice(0, args.probe_problems or None))}
            run = {"pretrain": meta, "before": evaluate(model, task, data["test"], spec["block_length"]),
                   "before_on_rl_problems": evaluate(model, task, practised(rl_data["train"]), spec["block_length"]),
                   "headroom": headroom(model, task, data["test"], spec["block_length"]), "algorithms": {}}
            if task == "countdown":
                run["chance"] = countdown_chance(data["test"])
            print(task, seed, "pretrained", run["before"], run["headroom"], meta, flush=True)
            if task == "countdown" and not args.skip_elbo:
                run["elbo_study"] = elbo_study(model, data, 24, args.elbo_replicates, seed)
                print(json.dumps(run["elbo_study"], indent=1), flush=True)
            for algorithm in args.algorithms:
                run["algorithms"][algorithm] = run_rl(task, model, rl_data, algorithm, seed, args.rollouts,
                                                      spec["block_length"], args.lr, args.closeness, overrides,
                                                      args.eval_every, args.ema_decay, args.rollouts_per_update)
                print(task, seed, algorithm, json.dumps(run["algorithms"][algorithm]), flush=True)
            run["rl_lr"], run["rollouts_per_algorithm"] = args.lr, args.rollouts
            run["rl_problems"] = rl_data["train"].sizes["problem"]
            run["block_length"], run["closeness_weight"] = spec["block_length"], args.closeness
            run["option_overrides"], run["ema_decay"], run["model"] = overrides, args.ema_decay, architecture
            run["rollouts_per_update"] = args.rollouts_per_update
            key = f"{task}/seed{seed}/lr{args.lr:g}/rollouts{args.rollouts}{model_suffix(architecture, '/')}"
            if args.pretrain_steps:
                key += f"/pretrain{args.pretrain_steps}"
            if args.probe_problems:
                key += f"/probe{args.probe_problems}"
            if args.block_length:
                key += f"/block{args.block_length}"
            if args.closeness:
                key += f"/closeness{args.closeness:g}"
            key += "".join(f"/{name}={value}" for name, value in overrides.items())
            if args.ema_decay:
                key += f"/ema{args.ema_decay:g}"
            if args.rollouts_per_update != ROLLOUTS_PER_UPDATE:
                key += f"/batch{args.rollouts_per_update}"
            save_run(key, run, config)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Tiny MDLM on Countdown and Sudoku: pretrain, then each discrete RL algorithm at equal rollouts.

Every model comes from the code the pipeline runs: the shipped spec (pipelines/countdown.yaml or
sudoku.yaml) with this run's options is built in this process by its own stage functions
(benchmarks/inprocess.py: the data and pretrain stages, cached in an artifact root), and RL is the rl
stage's loop (`fine_tune_discrete`, tasks/rl/discrete/stage.py) with a hook that records held-out accuracy.
Also: the pretrained model's sampled accuracy and pass@8 on the held-out split (RL's headroom), what
guessing scores there (Countdown: a uniformly drawn expression over the given numbers, exact by
enumeration), greedy accuracy on the training problems RL draws from before and after RL (does a gain
transfer to held-out problems?), ELBO estimator bias, variance and MSE against the exact ELBO (mask
enumeration) at equal forward budgets, and forward passes per rollout of each algorithm. Prints and writes
benchmarks/results/mdlm_rl.json (runs of several invocations are merged by task and seed; keys of runs made
through the rl stage end in /stage, the others were measured with an earlier loop of this benchmark's own).

    python benchmarks/mdlm_rl.py --tasks countdown sudoku --seeds 0
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --pretrain-steps 4000
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --block-length 8   # decode in one block
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --closeness 0.4    # dense reward beside the verifier
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --algorithms coupled_grpo --set beta=0 \
        --ema-decay 0.99 --eval-every 12288    # override an option, score an EMA, record a held-out curve
    python benchmarks/mdlm_rl.py --tasks countdown --seeds 0 --algorithms coupled_grpo --model d_model=128 \
        num_layers=4 --rollouts-per-update 160    # a larger MDLM, a larger rollout batch
    python benchmarks/mdlm_rl.py --quick --algorithms coupled_grpo   # smoke run, written to a temp folder
"""

from __future__ import annotations

import copy
import fcntl
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from harness import REPO, environment, open_benchmark, parser
from inprocess import metrics_of, run_in_process
from pydantic import TypeAdapter, ValidationError

from diffpipe.flows.spec_loading import validate_spec
from diffpipe.schemas import PipelineSpec
from diffpipe.schemas.rl_discrete import DISCRETE_ALGORITHMS, DiscreteAlgorithmSpec
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.data.reasoning import MASK, VOCAB, all_countdown_expressions, reward_fn_for
from diffpipe.tasks.mdlm import MaskPlan, draw_elbo_plan, masked_token_logps, plan_estimate, sample_completions
from diffpipe.tasks.mdlm.elbo import exact_elbo_from_sums, mask_size_sums
from diffpipe.tasks.nets.mdlm import MaskedDiffusionTransformer
from diffpipe.tasks.registry import get_domain
from diffpipe.tasks.rl.discrete.stage import DiscreteRun, fine_tune_discrete, summary_metrics
from diffpipe.tasks.sample import load_checkpoint
from diffpipe.tasks.training import published_weights

ALGORITHM_NAMES = [cls.model_fields["algorithm"].default for cls in DISCRETE_ALGORITHMS]
"""Every discrete algorithm, in the schema's order."""

CACHE = Path(tempfile.gettempdir()) / "diffpipe_mdlm_rl_cache"
"""Artifact root of the data and pretrain stages (reused by later invocations: same spec, same cache key)."""
TASKS = {
    # block_length: two semi-autoregressive blocks per completion; pretrain steps give a modest accuracy
    "countdown": {"spec": "countdown.yaml", "block_length": 4, "pretrain_steps": 1500},
    "sudoku": {"spec": "sudoku.yaml", "block_length": 8, "pretrain_steps": 600},
}
MODEL = {"d_model": 64, "num_layers": 3, "num_heads": 4}
ROLLOUTS_PER_UPDATE = 48
PRACTISED_SHOWN = 200
"""How many of the problems RL draws from are scored before and after RL (the held-out split's size)."""
QUICK = {"data": {"num_train": 64, "num_test": 16}, "pretrain_steps": 30, "rollouts": 48}
"""--quick: a smoke run (tiny splits, 30 pretraining steps, one or two rollout batches), not a measurement."""


def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and completion token tensors of a split."""
    return torch.from_numpy(ds.prompt.values), torch.from_numpy(ds.completion.values)


def model_suffix(architecture: dict, separator: str) -> str:
    """'' for the default MODEL, else e.g. '/d_model=128/num_layers=4' (separator '/'): names keys."""
    return "".join(f"{separator}{name}={value}" for name, value in architecture.items() if MODEL[name] != value)


def pipeline(task: str, seed: int, pretrain_steps: int, architecture: dict, quick: bool) -> tuple[dict, dict]:
    """The shipped spec of `task` with this run's MDLM and pretraining length (its data and pretrain stages
    only), and the spec's rl stage (a template: its init weights)."""
    raw = yaml.safe_load((REPO / "pipelines" / TASKS[task]["spec"]).read_text())
    raw["data"].update(seed=seed, **(QUICK["data"] if quick else {}))
    raw["model"] = {"arch": "mdlm", **architecture}
    pretrain = next(s for s in raw["stages"] if s["name"] == "pretrain")
    pretrain.update(steps=pretrain_steps, checkpoint_every=pretrain_steps)
    template = next(s for s in raw["stages"] if s["name"] == "rl")
    raw["stages"] = [pretrain]
    raw["storage"] = {"root": str(CACHE / ("quick" if quick else "full"))}
    raw["runtime"] = {"device": "cpu", "seed": seed, "num_threads": 1}
    return raw, template


def rl_stage(template: dict, algorithm: str, options: dict, args) -> dict:
    """The rl stage of one algorithm at this run's budget: the references' group size, `rollouts_per_update`
    rollouts per batch, enough batches for `rollouts`, the verifier's reward (plus closeness), AdamW as the
    pipeline's loop runs it with the references' gradient clip 0.2 and no weight decay."""
    spec = TypeAdapter(DiscreteAlgorithmSpec).validate_python({"algorithm": algorithm, **options})
    group_size = spec.reference_group_size
    groups = max(1, args.rollouts_per_update // group_size)
    updates = math.ceil(args.rollouts / (group_size * groups))
    steps = updates * spec.num_iterations
    rewards = [{"name": "exact_verifier"}] + ([{"name": "countdown_closeness", "weight": args.closeness}]
                                              if args.closeness else [])
    return {"name": "rl", "stage": "rl", "init": "pretrain", "init_weights": template.get("init_weights", "online"),
            "algorithm": spec.model_dump(mode="json"), "rewards": rewards, "group_size": group_size,
            "groups_per_step": groups, "steps": steps, "lr": args.lr, "grad_clip": 0.2, "weight_decay": 0.0,
            "warmup_steps": 0, "ema_decay": args.ema_decay or None, "checkpoint_every": steps, "log_every": steps}


def run_rl(spec: PipelineSpec, store, refs: dict, data: dict, task: str, block_length: int,
           eval_every: int) -> dict:
    """The rl stage's loop from the pretrained checkpoint; held-out accuracy and wall time (evaluation excluded).

    With `eval_every`, greedy held-out accuracy of the online weights is also recorded every that many rollouts.
    What is scored at the end is what the stage publishes (its EMA when `ema_decay` is set); the online
    weights' scores are kept beside it.
    """
    curve, evaluating = {}, [0.0]
    mu = spec.stage("rl").algorithm.num_iterations

    def hook(step: int, run: DiscreteRun) -> None:
        rollouts = step // mu * spec.stage("rl").group_size * spec.stage("rl").groups_per_step
        if eval_every and step % mu == 0 and rollouts // eval_every > len(curve):
            tick = time.perf_counter()
            curve[rollouts] = evaluate(run.policy.eval(), task, data["test"], block_length)["accuracy"]
            run.policy.train()
            evaluating[0] += time.perf_counter() - tick

    with tempfile.TemporaryDirectory() as tmp:
        key = f"bench-mdlm-rl-{time.time_ns()}"
        ctx = StageContext(spec, "rl", key, {"data": refs["data"], "init": refs["pretrain"]}, store, Path(tmp),
                           log=lambda m: None, progress=False)
        done = fine_tune_discrete(ctx, spec.stage("rl"), hook)
        store.clear_run(key)
    wall = done.result.wall_s - evaluating[0]
    scored = published_weights(done.policy, done.ema)
    stats = summary_metrics(done.state)
    return {
        "after": evaluate(scored, task, data["test"], block_length), "wall_seconds": wall,
        "after_on_rl_problems": evaluate(scored, task, practised(data["train"]), block_length),
        **({"after_online_weights": evaluate(done.policy, task, data["test"], block_length)} if done.ema else {}),
        "updates": stats["rollout_batches"], "rollouts": stats["samples_generated"],
        "group_size": spec.stage("rl").group_size, "num_iterations": mu,
        "train_reward": stats["train_reward"], "train_accuracy": stats["train_accuracy"],
        "zero_std_ratio": stats["zero_std_ratio"], "forwards_per_rollout": stats["forwards_per_rollout"],
        "seconds_per_update": wall / stats["rollout_batches"],
        **({"held_out_accuracy_by_rollouts": curve} if curve else {}),
    }


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


def run_key(task: str, seed: int, args, architecture: dict, overrides: dict) -> str:
    """The results key of a run: task, seed and every option that differs from the defaults; '/stage' last."""
    key = f"{task}/seed{seed}/lr{args.lr:g}/rollouts{args.rollouts}{model_suffix(architecture, '/')}"
    if args.pretrain_steps:
        key += f"/pretrain{args.pretrain_steps}"
    if args.block_length:
        key += f"/block{args.block_length}"
    if args.closeness:
        key += f"/closeness{args.closeness:g}"
    key += "".join(f"/{name}={value}" for name, value in overrides.items())
    if args.ema_decay:
        key += f"/ema{args.ema_decay:g}"
    if args.rollouts_per_update != ROLLOUTS_PER_UPDATE:
        key += f"/batch{args.rollouts_per_update}"
    return key + "/stage"


def pretrained(task: str, seed: int, args, architecture: dict) -> tuple[dict, dict, object, dict, dict,
                                                                       torch.nn.Module]:
    """Data and pretrain stages of the task's spec (cached): raw spec, rl template, store, refs, splits and the
    weights RL starts from."""
    steps = args.pretrain_steps or (QUICK["pretrain_steps"] if args.quick else TASKS[task]["pretrain_steps"])
    raw, template = pipeline(task, seed, steps, architecture, args.quick)
    store, refs = run_in_process(validate_spec(copy.deepcopy(raw)))
    domain, data_path = get_domain(raw["data"]["kind"]), store.local_path(refs["data"])
    data = {split: domain.load_split(data_path, split) for split in ("train", "test")}
    model, _, _ = load_checkpoint(store.local_path(refs["pretrain"]), template.get("init_weights", "online"))
    return raw, template, store, refs, data, model.eval()


def parse() -> tuple:
    """Options (the harness's shared ones and this benchmark's), algorithm overrides and the MDLM architecture."""
    options = parser(__doc__)
    options.add_argument("--tasks", nargs="+", choices=list(TASKS), default=["countdown", "sudoku"])
    options.add_argument("--seeds", nargs="+", type=int, default=[0])
    options.add_argument("--algorithms", nargs="+", choices=ALGORITHM_NAMES, default=list(ALGORITHM_NAMES))
    options.add_argument("--rollouts", type=int, default=None, help="rollouts per algorithm (default 1536)")
    options.add_argument("--elbo-replicates", type=int, default=128)
    options.add_argument("--lr", type=float, default=1e-4)
    options.add_argument("--skip-elbo", action="store_true")
    options.add_argument("--pretrain-steps", type=int, default=None, help="default: the task's")
    options.add_argument("--block-length", type=int, default=None,
                         help="decoding block length of evaluation and rollouts (default: the task's)")
    options.add_argument("--closeness", type=float, default=0.0,
                         help="Countdown: weight of the countdown_closeness reward added to the verifier's")
    options.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                         help="override the algorithms' schema options, e.g. beta=0 num_iterations=4")
    options.add_argument("--eval-every", type=int, default=0,
                         help="also record greedy held-out accuracy every this many rollouts")
    options.add_argument("--ema-decay", type=float, default=0.0,
                         help="the rl stage's ema_decay (per optimizer step); its EMA is what is scored (0: none)")
    options.add_argument("--model", nargs="+", default=[], metavar="KEY=VALUE",
                         help=f"override the MDLM's architecture {MODEL}, e.g. d_model=128 num_layers=4")
    options.add_argument("--rollouts-per-update", type=int, default=ROLLOUTS_PER_UPDATE,
                         help="rollouts per rollout batch (rounded down to whole groups, at least one group)")
    args = open_benchmark(options.parse_args())
    args.rollouts = args.rollouts or (QUICK["rollouts"] if args.quick else 1536)
    overrides = dict(option_override(item) for item in args.set)
    architecture = {**MODEL, **dict(option_override(item) for item in args.model)}
    check_architecture(architecture)
    for algorithm in args.algorithms:  # fail before pretraining, not after it
        try:
            TypeAdapter(DiscreteAlgorithmSpec).validate_python({"algorithm": algorithm, **overrides})
        except ValidationError as error:
            raise SystemExit(f"--set {' '.join(args.set)} does not fit {algorithm}: {error}") from None
    return args, overrides, architecture


def main() -> None:
    """Run the benchmark for the requested tasks and seeds, merge into the JSON results."""
    args, overrides, architecture = parse()
    results = args.out / "mdlm_rl.json"
    config = {"model": MODEL, "rollouts_per_update": ROLLOUTS_PER_UPDATE, "torch_threads": args.threads,
              "loop": "the rl stage's (fine_tune_discrete: AdamW, grad_clip 0.2, no weight decay, no warmup)",
              "options": "the rl stage schema's defaults (schemas/rl_discrete.py = the references'), "
                         "block_length per task unless a run's key names one"}
    for task in args.tasks:
        block_length = args.block_length or TASKS[task]["block_length"]
        for seed in args.seeds:
            raw, template, store, refs, data, model = pretrained(task, seed, args, architecture)
            meta = metrics_of(store, refs["pretrain"])
            run = {"pretrain": {k: v for k, v in meta.items() if isinstance(v, int | float | str | None)},
                   "before": evaluate(model, task, data["test"], block_length),
                   "before_on_rl_problems": evaluate(model, task, practised(data["train"]), block_length),
                   "headroom": headroom(model, task, data["test"], block_length), "algorithms": {}}
            if task == "countdown":
                run["chance"] = countdown_chance(data["test"])
            print(task, seed, "pretrained", run["before"], run["headroom"], run["pretrain"], flush=True)
            if task == "countdown" and not args.skip_elbo:
                run["elbo_study"] = elbo_study(model, data, 24, args.elbo_replicates, seed)
                print(json.dumps(run["elbo_study"], indent=1), flush=True)
            for algorithm in args.algorithms:
                options = {"block_length": block_length, **overrides}
                stage = rl_stage(template, algorithm, options, args)
                spec = validate_spec({**raw, "stages": [*raw["stages"], stage]})
                run["algorithms"][algorithm] = run_rl(spec, store, refs, data, task, block_length, args.eval_every)
                print(task, seed, algorithm, json.dumps(run["algorithms"][algorithm]), flush=True)
            run.update(rl_lr=args.lr, rollouts_per_algorithm=args.rollouts, block_length=block_length,
                       closeness_weight=args.closeness, option_overrides=overrides, ema_decay=args.ema_decay,
                       model=architecture, rollouts_per_update=args.rollouts_per_update,
                       rl_problems=data["train"].sizes["problem"], environment=environment())
            save_run(run_key(task, seed, args, architecture, overrides), run, config, results)
    print(f"wrote {results}")


if __name__ == "__main__":
    main()

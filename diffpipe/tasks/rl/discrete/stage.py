"""The `rl` stage for masked-diffusion checkpoints (diffu_grpo, coupled_grpo, espo, gdpo, dmpo, wd1).

Each optimizer step of the shared resumable loop (tasks/training.py) calls `DiscreteRun.step_loss`:
every `num_iterations` (mu) steps it draws `groups_per_step` training prompts, samples `group_size`
completions of each with the block sampler (in eval mode), scores them with the reward plugins (the
exact verifiers) and prepares the algorithm's advantages, mask plans and old/reference surrogates under
those plans; every step returns the loss of one inner iteration. The loop clips gradients, steps AdamW,
keeps the EMA and checkpoints every `checkpoint_every` steps rounded up to a multiple of mu, so a
resumed run starts on a fresh rollout batch. The reference model is the frozen init checkpoint.

Across processes every rank draws the same prompts, mask plans and sampler noise (one generator state),
but each model forward runs only this rank's rows of the batch and the outputs are gathered
(`distributed.RowSharded`), and each rank scores only its rows with the verifiers (rewards gathered).
So rollouts, scoring and the loss's forwards and backwards are split over the ranks, while the
advantages and the loss are computed over whole groups, exactly as in one process.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin
from diffusers.training_utils import EMAModel
from torch import nn

from diffpipe.errors import SpecError
from diffpipe.schemas.reasoning import MaskedDiffusion
from diffpipe.schemas.rl import RLStage
from diffpipe.storage.formats import SCHEDULER_DIR, TRAINING_FILE, write_json

from ...context import StageContext, StageOutput
from ...data.reasoning import EOS
from ...data.reasoning_domain import ReasoningDomain
from ...distributed import frozen_copy, row_sharded, sharded_rows
from ...registry import get_domain
from ...sample import load_checkpoint
from ...training import TrainConfig, TrainResult, plot_against_budget, plot_losses, save_trained, train
from ..rewards import RewardPlugin, resolve_reward
from .base import DiscreteAlgorithm, Prepared
from .core import Rollouts, zero_std_ratio
from .update import count_forwards, make_algorithm

LOG_COLUMNS = ("samples", "wall_s", "reward", "accuracy", "zero_std_ratio", "sampling_forwards",
               "scoring_forwards", "grad_forwards", "clip_fraction", "kl", "abs_log_ratio", "positive_weight_ess",
               "buffer_reward")
"""Per-step log; rollout columns (reward .. scoring_forwards) are set on steps that drew a rollout batch."""

Hook = Callable[[int, "DiscreteRun"], None]
"""Called at the start of every optimizer step with the step index (benchmarks evaluate here)."""


class DiscreteState(nn.Module):
    """What the loop checkpoints besides the policy: the step counter, the per-step log and the algorithm's
    own state (TR2-D2's replay buffer), if it has one."""

    def __init__(self, steps: int, algorithm: nn.Module | None = None):
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("log", torch.full((steps, len(LOG_COLUMNS)), math.nan, dtype=torch.float64))
        if algorithm is not None:
            self.algorithm = algorithm


@dataclass
class Batch:
    """The current rollout batch, what the algorithm prepared from it, and the forwards that took per rollout."""

    rollouts: Rollouts
    prepared: Prepared
    sampling_forwards: float
    scoring_forwards: float


class DiscreteRun:
    """Per-step work: rollouts, verifier rewards, the algorithm's prepared batch, one inner iteration's loss."""

    def __init__(self, spec: RLStage, policy: ModelMixin, reference: ModelMixin, algorithm: DiscreteAlgorithm,
                 reward_fn: Callable, prompts: torch.Tensor, completion_length: int, state: DiscreteState,
                 hook: Hook | None = None):
        self.spec, self.policy, self.reference, self.algorithm = spec, policy, reference, algorithm
        self.sharded_policy, self.sharded_reference = row_sharded(policy), row_sharded(reference)
        """What the algorithm calls: the models with each forward split over the ranks (themselves in one process)."""
        self.reward_fn, self.prompts, self.state = sharded_rows(reward_fn), prompts, state
        self.completion_length, self.hook = completion_length, hook
        self.current: Batch | None = None
        self.clock: tuple[float, float] | None = None
        """(wall seconds logged before this process, perf_counter at its first step)."""

    def collect(self, gen: torch.Generator) -> Batch:
        """Sample and score a rollout batch with the policy in eval mode; prepare the algorithm's inputs."""
        index = torch.randint(0, self.prompts.shape[0], (self.spec.groups_per_step,), generator=gen)
        self.policy.eval()
        try:
            policy, reference = self.sharded_policy, self.sharded_reference
            with count_forwards(policy, reference) as sampling:
                rollouts = self.algorithm.collect(policy, reference, self.prompts[index.to(self.prompts.device)],
                                                  self.reward_fn, self.spec.group_size, self.completion_length, gen)
            with count_forwards(policy, reference) as scoring:
                prepared = self.algorithm.prepare(policy, reference, rollouts, gen)
        finally:
            self.policy.train()
        rows = rollouts.completion.shape[0]
        return Batch(rollouts, prepared, sampling["no_grad"] / rows, scoring["no_grad"] / rows)

    def step_loss(self, gen: torch.Generator) -> torch.Tensor:
        """The loss of the next optimizer step (the loop back-propagates and steps)."""
        step = int(self.state.step)
        if self.clock is None:  # a resumed run continues the clock of its checkpoint
            wall = self.state.log[step - 1, LOG_COLUMNS.index("wall_s")] if step > 0 else 0.0
            self.clock = (float(wall), time.perf_counter())
        if self.hook is not None:
            self.hook(step, self)
        iteration = step % self.spec.algorithm.num_iterations
        if iteration == 0:
            self.current = self.collect(gen)
        with count_forwards(self.sharded_policy) as counts:
            loss, stats = self.algorithm.loss(self.sharded_policy, self.current.rollouts, self.current.prepared,
                                              iteration)
        stats["grad_forwards"] = counts["grad"] / self.current.rollouts.completion.shape[0]
        if iteration == 0:
            stats.update(self.rollout_stats())
        self.record(step, iteration == 0, stats)
        self.state.step += 1
        return loss

    def rollout_stats(self) -> dict[str, float]:
        """Reward, accuracy, zero-variance groups and forwards per rollout of the current batch."""
        r = self.current.rollouts
        return {"reward": float(r.rewards.mean()), "accuracy": float(r.correct.float().mean()),
                "zero_std_ratio": zero_std_ratio(r.rewards, r.group_size),
                "sampling_forwards": self.current.sampling_forwards, "scoring_forwards": self.current.scoring_forwards}

    def record(self, step: int, fresh: bool, stats: dict[str, float]) -> None:
        """One row of the log (rollout columns only on steps that drew a rollout batch)."""
        log = self.state.log
        previous = float(log[step - 1, LOG_COLUMNS.index("samples")]) if step > 0 else 0.0
        rows = self.current.rollouts.completion.shape[0]
        row = {"wall_s": self.clock[0] + time.perf_counter() - self.clock[1],
               "samples": previous + (rows if fresh else 0), **stats}
        for name, value in row.items():
            if name in LOG_COLUMNS:
                log[step, LOG_COLUMNS.index(name)] = value


def make_reward_fn(ctx: StageContext, spec: RLStage, domain: ReasoningDomain) -> Callable:
    """(prompts, completions) -> (weighted sum of the reward plugins, exact correctness)."""
    index, kind, data_path = ctx.pipeline.stage_index(ctx.node), ctx.pipeline.data.kind, ctx.input_path("data")
    plugins: list[tuple[RewardPlugin, float]] = [
        (resolve_reward(r.name, kind, f"stages[{index}].rewards[{j}].name"), r.weight)
        for j, r in enumerate(spec.rewards)]

    def reward_fn(prompts: torch.Tensor, completions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = sum(w * p.fn(completions, prompts, data_path).float().cpu() for p, w in plugins)
        return total, domain.reward(prompts, completions)[1]

    return reward_fn


@dataclass
class FineTuned:
    """What `fine_tune_discrete` returns: policy, state (log), EMA, the loop's result, init checkpoint info."""

    policy: ModelMixin
    state: DiscreteState
    ema: EMAModel | None
    result: TrainResult
    info: dict[str, Any]


def train_config(spec: RLStage, num_iterations: int) -> TrainConfig:
    """The loop's options; checkpoints on rollout-batch boundaries."""
    every = math.ceil(spec.checkpoint_every / num_iterations) * num_iterations
    return TrainConfig(steps=spec.steps, lr=spec.lr, weight_decay=spec.weight_decay, warmup_steps=spec.warmup_steps,
                       grad_clip=spec.grad_clip, ema_decay=spec.ema_decay, checkpoint_every=every,
                       log_every=spec.log_every, count_flops=False)


def fine_tune_discrete(ctx: StageContext, spec: RLStage, hook: Hook | None = None) -> FineTuned:
    """Run (or resume) RL fine-tuning of the masked-diffusion `init` checkpoint; nothing is published."""
    index, kind = ctx.pipeline.stage_index(ctx.node), ctx.pipeline.data.kind
    domain = get_domain(kind)
    policy, objective, info = load_checkpoint(ctx.input_path("init"), spec.init_weights)
    if not isinstance(objective, MaskedDiffusion) or not isinstance(domain, ReasoningDomain):
        raise SpecError(f"stages[{index}].algorithm.algorithm",
                        f"{spec.algorithm.algorithm} fine-tunes masked-diffusion LMs on reasoning data",
                        "an init stage trained with objective masked_diffusion on countdown or sudoku data",
                        f"'{spec.init}' ({objective.kind}) on {kind} data")
    algorithm = make_algorithm(spec.algorithm, policy.config.mask_token_id, EOS)
    reference = frozen_copy(policy, ctx.device)
    policy.to(ctx.device)
    train_split = domain.batches(ctx, ctx.device)
    state = DiscreteState(spec.steps, algorithm.state).to(ctx.device)
    run = DiscreteRun(spec, policy, reference, algorithm, make_reward_fn(ctx, spec, domain),
                      train_split.labels, train_split.x.shape[1], state, hook)
    policy, result, ema = train(ctx, policy, run.step_loss, train_config(spec, spec.algorithm.num_iterations),
                                ctx.generator(offset=2), loss_state=state)
    return FineTuned(policy, state, ema, result, {**info, "objective": objective.model_dump(mode="json")})


def log_rows(state: DiscreteState, column: str) -> torch.Tensor:
    """The log rows of steps that drew a rollout batch."""
    log = state.log.cpu()
    return log[~torch.isnan(log[:, LOG_COLUMNS.index(column)])]


def summary_metrics(state: DiscreteState) -> dict[str, Any]:
    """First and last tenth of rollout batches (reward, accuracy), zero-variance groups, forwards per rollout."""
    rows = log_rows(state, "reward")
    k = max(1, len(rows) // 10)
    out: dict[str, Any] = {"rollout_batches": len(rows),
                           "samples_generated": int(state.log[-1, LOG_COLUMNS.index("samples")])}
    for name in ("reward", "accuracy"):
        c = rows[:, LOG_COLUMNS.index(name)]
        out[f"train_{name}"] = {"first": float(c[:k].mean()), "last": float(c[-k:].mean()),
                                "gain": float(c[-k:].mean() - c[:k].mean())}
    out["zero_std_ratio"] = float(rows[:, LOG_COLUMNS.index("zero_std_ratio")].mean())
    grad = float(state.log[:, LOG_COLUMNS.index("grad_forwards")].nansum()) / max(1, len(rows))
    out["forwards_per_rollout"] = {"sampling": float(rows[0, LOG_COLUMNS.index("sampling_forwards")]),
                                   "scoring": float(rows[0, LOG_COLUMNS.index("scoring_forwards")]),
                                   "grad": grad}
    return out


def plot_rewards(state: DiscreteState, path: Path, title: str) -> Path:
    """Mean rollout reward and accuracy against samples generated, as a PNG."""
    rows = log_rows(state, "reward")
    series = {name: rows[:, LOG_COLUMNS.index(name)] for name in ("reward", "accuracy")}
    return plot_against_budget(rows[:, LOG_COLUMNS.index("samples")], series, path, title, "rollout batch mean")


def run_discrete_rl(ctx: StageContext) -> StageOutput:
    """Fine-tune, publish the checkpoint (diffusers layout, masked-diffusion training.json), curves, metrics."""
    spec: RLStage = ctx.pipeline.stage(ctx.node)
    done = fine_tune_discrete(ctx, spec)
    out = ctx.workdir
    save_trained(done.policy.cpu(), done.ema, out)
    shutil.copytree(ctx.input_path("init") / SCHEDULER_DIR, out / SCHEDULER_DIR)
    write_json(out / TRAINING_FILE, {
        "objective": done.info["objective"], "steps": spec.steps, "ema": spec.ema_decay is not None,
        "num_classes": None,
        "rl": {"algorithm": spec.algorithm.model_dump(mode="json"), "rewards": [r.model_dump() for r in spec.rewards],
               "group_size": spec.group_size, "groups_per_step": spec.groups_per_step,
               "init_steps": done.info.get("steps")},
    })
    log = done.state.log.cpu()
    write_json(out / "reward_log.json", {c: [None if math.isnan(v) else v for v in log[:, i].tolist()]
                                         for i, c in enumerate(LOG_COLUMNS)})
    metrics = {**summary_metrics(done.state), "algorithm": spec.algorithm.algorithm, "steps": spec.steps,
               **done.result.timing()}
    write_json(out / "metrics.json", metrics)
    title = f"{ctx.node}: {spec.algorithm.algorithm}"
    images = {"reward curve": plot_rewards(done.state, out / "reward_curve.png", title),
              "loss curve": plot_losses([abs(v) + 1e-12 for v in done.result.losses], out / "loss_curve.png",
                                        f"{title} (|loss|)")}
    r = metrics["train_reward"]
    summary = (f"{spec.algorithm.algorithm} for {spec.steps} steps on {metrics['samples_generated']} rollouts: "
               f"rollout reward {r['first']:.3g} -> {r['last']:.3g} ({r['gain']:+.3g}).")
    return StageOutput("checkpoint", metrics, summary, images)

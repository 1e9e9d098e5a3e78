"""The `rl` stage for flow-matching and flow-map checkpoints: group rollouts, verifiable rewards, one algorithm's loss.

A flow-map init (a `midtrain` / `distill` student with objective `flow_map`) is fine-tuned as the
few-step sampler it is: rollouts step it with its mean velocity over each step of the algorithm's
`sampler_steps` grid, and the published checkpoint keeps its two-time objective (common.py, base.py).

Each optimizer step of the shared resumable loop (tasks/training.py) calls `RLRun.step_loss`: every
`updates_per_rollout` steps it samples `groups_per_step` conditions from the domain's training batches,
`group_size` rollouts for each, scores them with the reward plugins and turns the rewards into
advantages; then it returns the algorithm's loss on this step's slice of the rollout batch. Across
processes each rank rolls out and scores its own whole groups of the batch; the samples and rewards
are gathered so that advantages are normalised over whole groups and every rank computes the loss. Everything
the loop must checkpoint for an exact resume (the algorithm's frozen copies, MARBLE's weights, the
step counter and the reward log) lives in `RLState`, passed to the loop as its `loss_state`.
"""

from __future__ import annotations

import copy
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
from diffpipe.schemas import FlowMatching
from diffpipe.schemas.distill import FlowMapObjective
from diffpipe.schemas.rl import RLStage
from diffpipe.schemas.rl_discrete import DiscreteAlgorithmBase
from diffpipe.storage.formats import SCHEDULER_DIR, TRAINING_FILE, write_json

from ..conditions import repeat_conditions, select_conditions
from ..context import StageContext, StageOutput
from ..distributed import all_gather_rows, frozen_copy, local_slice
from ..domain import BatchSource, Domain
from ..registry import get_domain, stage
from ..sample import load_checkpoint
from ..training import (
    TrainConfig,
    TrainResult,
    plot_against_budget,
    plot_losses,
    save_trained,
    train,
)
from .continuous import ContinuousAlgorithm, Nets, Rollout, balance, make_algorithm, rollout, sampler_grid
from .discrete.stage import run_discrete_rl
from .rewards import RewardPlugin, resolve_reward

Hook = Callable[[int, "RLRun"], None]
"""Called at the start of every optimizer step with the step index (benchmarks evaluate here)."""


class RLState(nn.Module):
    """What the loop checkpoints besides the policy: the algorithm's frozen copies, step, logs, MARBLE weights."""

    def __init__(self, policy: ModelMixin, anchor_names: tuple[str, ...], columns: list[str], steps: int,
                 num_rewards: int):
        super().__init__()
        self.anchors = nn.ModuleDict({n: copy.deepcopy(policy).requires_grad_(False) for n in anchor_names})
        self.columns = columns
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("log", torch.full((steps, len(columns)), math.nan, dtype=torch.float64))
        self.register_buffer("alpha", torch.full((num_rewards,), math.nan))


@dataclass
class Collected:
    """One rollout batch with its rewards (K, N) and advantages (K', N)."""

    rollout: Rollout
    rewards: torch.Tensor
    advantages: torch.Tensor


class RLRun:
    """Per-step work of the rl stage: rollouts, rewards, advantages, the algorithm's loss, logging."""

    def __init__(self, ctx: StageContext, spec: RLStage, domain: Domain, policy: ModelMixin, state: RLState,
                 reference: ModelMixin, algorithm: ContinuousAlgorithm, rewards: list[RewardPlugin],
                 batches: BatchSource, hook: Hook | None = None, two_time: bool = False):
        self.ctx, self.spec, self.domain, self.policy, self.state = ctx, spec, domain, policy, state
        self.algorithm, self.rewards, self.batches, self.hook = algorithm, rewards, batches, hook
        self.data_path = ctx.input_path("data")
        self.grid = sampler_grid(algorithm.sampler_steps, two_time)
        self.nets = Nets(domain.net(policy), domain.net(reference) if algorithm.uses_reference else None,
                         {n: domain.net(m) for n, m in state.anchors.items()}, two_time=two_time)
        self.weights = torch.tensor([r.weight for r in spec.rewards])
        self.current: Collected | None = None
        self.clock: tuple[float, float] | None = None
        """(wall seconds logged before this process, perf_counter at its first step)."""

    @property
    def batch_size(self) -> int:
        """Rollouts per batch."""
        return self.spec.group_size * self.spec.groups_per_step

    def collect(self, gen: torch.Generator) -> Collected:
        """Sample a rollout batch from the rollout policy, score it, compute advantages."""
        device = self.ctx.device
        x_real, cond = self.batches.next(gen, self.spec.groups_per_step)
        cond = repeat_conditions(cond, self.spec.group_size)
        sampler = self.nets.policy if self.algorithm.samples_with == "policy" else \
            self.nets.anchors[self.algorithm.samples_with]
        shape = (self.batch_size, *x_real.shape[1:])
        self.policy.eval()  # rollouts without dropout; the loss runs in training mode
        part = rollout(sampler, cond, shape, self.grid, self.algorithm.noise_level, gen, device,
                       keep_states=self.algorithm.keeps_states, rows=local_slice(self.batch_size),
                       two_time=self.nets.two_time)
        self.policy.train()
        own = torch.stack([r.fn(part.x0, part.cond, self.data_path).float().to(device) for r in self.rewards])
        out, rewards = whole_batch(part, cond), all_gather_rows(own, dim=1)
        combined = rewards if self.spec.combine == "marble" else (self.weights.to(device) @ rewards)[None]
        adv = self.algorithm.advantages(combined, self.spec.group_size, self.spec.global_std)
        return Collected(out, rewards, adv)

    def step_slice(self, step: int) -> tuple[Rollout, torch.Tensor]:
        """This step's share of the current rollout batch (updates_per_rollout equal slices)."""
        u = self.algorithm.updates_per_rollout
        n = self.batch_size // u
        index = torch.arange((step % u) * n, (step % u + 1) * n)
        r = self.current.rollout
        part = Rollout(r.x0[index.to(r.x0.device)], select_conditions(r.cond, index), r.grid,
                       None if r.states is None else r.states[:, index.to(r.x0.device)],
                       None if r.log_probs is None else r.log_probs[:, index.to(r.x0.device)])
        return part, self.current.advantages[:, index.to(r.x0.device)]

    def data_batch(self, gen: torch.Generator) -> tuple[torch.Tensor, Any]:
        """Real samples for the data term, conditions dropped like in pretraining."""
        n = self.algorithm.spec.data_batch_size or self.batch_size
        x, cond = self.batches.next(gen, n)
        drop = torch.rand(n, generator=gen) < self.algorithm.spec.data_cond_dropout
        return x, self.domain.drop_condition(self.policy, cond, drop)

    def step_loss(self, gen: torch.Generator) -> torch.Tensor:
        """The loss of the next optimizer step (the loop back-propagates and steps)."""
        step = int(self.state.step)
        if self.clock is None:  # a resumed run continues the clock of its checkpoint
            wall = self.state.log[step - 1, self.state.columns.index("wall_s")] if step > 0 else 0.0
            self.clock = (float(wall), time.perf_counter())
        if step > 0:
            self.algorithm.update_anchors(dict(self.state.anchors), self.policy, step - 1)
        self.state.anchors.eval()
        if self.hook is not None:
            self.hook(step, self)
        fresh = step % self.algorithm.updates_per_rollout == 0 or self.current is None
        if fresh:
            self.current = self.collect(gen)
        batch, adv = self.step_slice(step)
        data = self.data_batch(gen) if self.algorithm.needs_data else None
        parts = self.algorithm.losses(self.nets, batch, adv, gen, data)
        if self.spec.combine == "marble":
            previous = None if torch.isnan(self.state.alpha).any() else self.state.alpha
            balanced = balance(parts.reward_losses, list(self.policy.parameters()), previous,
                               self.spec.marble.alpha_ema, self.spec.marble.normalize_gradients)
            self.state.alpha.copy_(balanced.alpha)
            parts.stats["min_cosine"] = balanced.min_cosine
            loss = balanced.loss + parts.regulariser
        else:
            loss = parts.reward_losses.sum() + parts.regulariser
        self.record(step, fresh, parts.regulariser, parts.stats)
        self.state.step += 1
        return loss

    def record(self, step: int, fresh: bool, regulariser: torch.Tensor, stats: dict[str, float]) -> None:
        """One row of the reward log (rewards only on steps that drew a rollout batch)."""
        log, cols = self.state.log, self.state.columns
        previous = float(log[step - 1, cols.index("samples")]) if step > 0 else 0.0
        wall = self.clock[0] + time.perf_counter() - self.clock[1]
        row = {"wall_s": wall, "samples": previous + self.batch_size * fresh,
               "regulariser": float(regulariser.detach()), **stats}
        if fresh:
            rewards = self.current.rewards.mean(1)
            row.update({f"reward/{r.name}": float(v) for r, v in zip(self.rewards, rewards, strict=True)})
            row["reward"] = float(self.weights.to(rewards) @ rewards)
        for name, value in row.items():
            if name in cols:
                log[step, cols.index(name)] = value


def whole_batch(part: Rollout, cond: Any) -> Rollout:
    """The rollout batch from every rank's rows, in rank order (`part` itself in one process)."""
    states = None if part.states is None else all_gather_rows(part.states, dim=1)
    log_probs = None if part.log_probs is None else all_gather_rows(part.log_probs, dim=1)
    return Rollout(all_gather_rows(part.x0), cond, part.grid, states, log_probs)


def log_columns(spec: RLStage, algorithm: ContinuousAlgorithm) -> list[str]:
    """Columns of the per-step reward log."""
    extra = algorithm.log_columns
    marble = ["min_cosine"] if spec.combine == "marble" else []
    return ["samples", "wall_s", "reward", *[f"reward/{r.name}" for r in spec.rewards], "regulariser",
            *extra, *marble]


@dataclass
class FineTuned:
    """What `fine_tune` returns: the trained policy, its state (log), the EMA, the loop's result, checkpoint info."""

    policy: ModelMixin
    state: RLState
    ema: EMAModel | None
    result: TrainResult
    info: dict[str, Any]


def fine_tune(ctx: StageContext, spec: RLStage, hook: Hook | None = None) -> FineTuned:
    """Run (or resume) RL fine-tuning of the `init` checkpoint; nothing is published."""
    index, kind = ctx.pipeline.stage_index(ctx.node), ctx.pipeline.data.kind
    domain = get_domain(kind)
    rewards = [resolve_reward(r.name, kind, f"stages[{index}].rewards[{j}].name") for j, r in enumerate(spec.rewards)]
    policy, objective, info = load_checkpoint(ctx.input_path("init"), spec.init_weights)
    if not isinstance(objective, FlowMatching | FlowMapObjective):
        raise SpecError(f"stages[{index}].init", "rl fine-tunes flow-matching and flow-map checkpoints",
                        "a stage trained with objective flow_matching or flow_map", f"'{spec.init}' ({objective.kind})")
    two_time = isinstance(objective, FlowMapObjective)
    algorithm = make_algorithm(spec.algorithm, FlowMatching() if two_time else objective)
    reference = frozen_copy(policy, ctx.device)
    policy.to(ctx.device)
    columns = log_columns(spec, algorithm)
    state = RLState(policy, algorithm.anchors, columns, spec.steps, len(spec.rewards)).to(ctx.device)
    run = RLRun(ctx, spec, domain, policy, state, reference, algorithm, rewards, domain.batches(ctx, ctx.device), hook,
                two_time)
    cfg = TrainConfig(steps=spec.steps, lr=spec.lr, weight_decay=spec.weight_decay, warmup_steps=spec.warmup_steps,
                      grad_clip=spec.grad_clip, ema_decay=spec.ema_decay, checkpoint_every=spec.checkpoint_every,
                      log_every=spec.log_every, count_flops=algorithm.updates_per_rollout == 1)
    policy, result, ema = train(ctx, policy, run.step_loss, cfg, ctx.generator(offset=2), loss_state=state)
    return FineTuned(policy, state, ema, result, {**info, "objective": objective.model_dump(mode="json")})


def reward_summary(state: RLState, spec: RLStage) -> dict[str, Any]:
    """First and last rollout rewards (mean of the first / last tenth of rollout batches) and their gain."""
    log, cols = state.log.cpu(), state.columns
    rows = log[~torch.isnan(log[:, cols.index("reward")])]
    k = max(1, len(rows) // 10)
    out: dict[str, Any] = {"rollout_batches": len(rows), "samples_generated": int(log[-1, cols.index("samples")])}
    for name in ["reward", *[f"reward/{r.name}" for r in spec.rewards]]:
        c = cols.index(name)
        first, last = float(rows[:k, c].mean()), float(rows[-k:, c].mean())
        out[name] = {"first": first, "last": last, "gain": last - first}
    return out


def plot_rewards(state: RLState, spec: RLStage, path: Path, title: str) -> Path:
    """Reward of each plugin against samples generated, as a PNG."""
    log, cols = state.log.cpu(), state.columns
    rows = log[~torch.isnan(log[:, cols.index("reward")])]
    series = {r.name: rows[:, cols.index(f"reward/{r.name}")] for r in spec.rewards}
    return plot_against_budget(rows[:, cols.index("samples")], series, path, title, "mean reward of the rollout batch")


@stage("rl")
def run_rl(ctx: StageContext) -> StageOutput:
    """Fine-tune, publish the checkpoint (diffusers layout, flow-matching training.json), reward curves, metrics."""
    spec: RLStage = ctx.pipeline.stage(ctx.node)
    if isinstance(spec.algorithm, DiscreteAlgorithmBase):  # masked-diffusion LMs: discrete/stage.py
        return run_discrete_rl(ctx)
    done = fine_tune(ctx, spec)
    out = ctx.workdir
    save_trained(done.policy.cpu(), done.ema, out)
    scheduler = ctx.input_path("init") / SCHEDULER_DIR
    if scheduler.exists():
        shutil.copytree(scheduler, out / SCHEDULER_DIR)
    write_json(out / TRAINING_FILE, {
        "objective": done.info["objective"], "steps": spec.steps, "ema": spec.ema_decay is not None,
        "num_classes": done.info.get("num_classes"),
        "rl": {"algorithm": spec.algorithm.model_dump(mode="json"), "rewards": [r.model_dump() for r in spec.rewards],
               "combine": spec.combine, "init_steps": done.info.get("steps")},
    })
    log = done.state.log.cpu()
    write_json(out / "reward_log.json", {c: [None if math.isnan(v) else v for v in log[:, i].tolist()]
                                         for i, c in enumerate(done.state.columns)})
    metrics = {**reward_summary(done.state, spec), "algorithm": spec.algorithm.algorithm, "steps": spec.steps,
               **(done.result.timing() if done.result.flops_per_step is None else done.result.metrics(spec.steps))}
    if spec.combine == "marble":
        metrics["marble_alpha"] = done.state.alpha.cpu().tolist()
    write_json(out / "metrics.json", metrics)
    title = f"{ctx.node}: {spec.algorithm.algorithm}"
    images = {"reward curve": plot_rewards(done.state, spec, out / "reward_curve.png", title),
              "loss curve": plot_losses([abs(v) + 1e-12 for v in done.result.losses], out / "loss_curve.png",
                                        f"{title} (|loss|)")}
    gain = metrics["reward"]["gain"]
    summary = (f"{spec.algorithm.algorithm} for {spec.steps} steps on {metrics['samples_generated']} samples: "
               f"reward {metrics['reward']['first']:.4g} -> {metrics['reward']['last']:.4g} ({gain:+.4g}).")
    return StageOutput("checkpoint", metrics, summary, images)

"""What the continuous search methods share: the batch problem, the reverse SDE step, x0 predictions.

Time convention as everywhere inside diffpipe: x_t = (1 - t) x0 + t eps, t = 1 noise -> t = 0 data,
velocity v = eps - x0, so the one-step prediction of the clean sample is x0_hat = x_t - t v. The
transitions are Flow-GRPO's SDE with the ODE's marginals (tasks/rl/continuous/common.py); the last
step into t = 0 is the deterministic Euler step, so returned samples carry no added noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..conditions import repeat_conditions, select_conditions
from ..objectives import NetFn
from ..rl.continuous.common import expand_like, sampler_grid, sde_step, step_end, velocity

RewardOf = Callable[[torch.Tensor, Any], torch.Tensor]
"""(samples (N, ...), their conditions) -> rewards (N,)."""


@dataclass
class SearchResult:
    """A batch drawn by a search: the samples, their rewards, network evaluations spent, method stats."""

    x: torch.Tensor
    rewards: torch.Tensor | None
    evaluations: int
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class ContinuousProblem:
    """One batch: `shape[0]` samples for conditions `cond`, a `steps`-step reverse SDE, a reward."""

    net: NetFn
    shape: tuple[int, ...]
    cond: Any
    steps: int
    reward_of: RewardOf | None
    gen: torch.Generator
    device: torch.device
    two_time: bool = False
    """The net is a flow map u(x, r, t): each step uses its mean velocity over the step (rl common.step_end)."""
    evaluations: int = 0
    grid: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.grid = sampler_grid(self.steps, self.two_time)

    @property
    def n(self) -> int:
        """Samples (conditions) in the batch."""
        return self.shape[0]

    def noise(self, rows: int) -> torch.Tensor:
        """Standard normal states for `rows` samples."""
        return torch.randn((rows, *self.shape[1:]), generator=self.gen).to(self.device)

    def conditions(self, index: torch.Tensor) -> Any:
        """Conditions of rows whose sample (condition) indices are `index`."""
        return select_conditions(self.cond, index)

    def repeated(self, k: int) -> Any:
        """Every condition repeated k times in a row (k particles per condition)."""
        return repeat_conditions(self.cond, k)

    def step(self, x: torch.Tensor, index: torch.Tensor, cond: Any,
             noise_level: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step of every row from grid index `index` (per row) to index + 1; returns (x_next, x0_hat)."""
        t, t_next = self.grid[index].to(self.device), self.grid[index + 1].to(self.device)
        v = velocity(self.net, x, t, cond, step_end(t_next, self.two_time))
        self.evaluations += x.shape[0]
        x0_hat = x - expand_like(t, x) * v
        sde = sde_step(x, v, t, t_next, float(self.grid[1]), noise_level)
        last = expand_like(index + 1 == self.steps, x).to(self.device)
        noise = torch.randn(x.shape, generator=self.gen).to(self.device)
        x_next = torch.where(last, x + expand_like(t_next - t, x) * v, sde.mean + sde.std * noise)
        return x_next, x0_hat

    def rollout(self, x: torch.Tensor, start: int, cond: Any, noise_level: float) -> torch.Tensor:
        """Rows of `x`, all at grid index `start`, integrated to t = 0."""
        for i in range(start, self.steps):
            x, _ = self.step(x, torch.full((x.shape[0],), i), cond, noise_level)
        return x

    def reward(self, x: torch.Tensor, cond: Any) -> torch.Tensor:
        """Rewards of rows `x` with conditions `cond`, as float32 on the batch's device."""
        return self.reward_of(x, cond).float().to(self.device)


def best_per_condition(x: torch.Tensor, rewards: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From k particles per condition (row-major), each condition's highest-reward particle and its reward."""
    grouped = rewards.reshape(-1, k)
    pick = grouped.argmax(1) + torch.arange(grouped.shape[0], device=rewards.device) * k
    return x[pick], rewards[pick]

"""Pieces every continuous RL algorithm shares: the SDE step with its log-probability, rollouts, advantages.

Internal time convention (timeconv.py): x_t = (1 - t) x0 + t eps, t = 0 is data, v = eps - x0. On the
sampler grid t_0 = 1 > t_1 > ... > t_T = 0, which is diffusers' FlowMatchEulerDiscreteScheduler `sigmas`.

A two-time (flow-map) policy steps from t to t_next with its mean velocity u(x, t_next, t) in place of v,
on the uniform grid of the flow-map scheduler: with noise level 0 that is exactly its few-step sampler,
and with noise the step is the same Gaussian kernel with u in the drift and in the kernel's score
estimate, so the log-probability of every stored transition is that of the kernel that drew it (and of
the same kernel under the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import FlowMapEulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from diffpipe.tasks.conditions import select_conditions
from diffpipe.tasks.objectives import NetFn
from diffpipe.tasks.timeconv import diffusers_timestep_from_t


def sampler_grid(steps: int, two_time: bool = False) -> torch.Tensor:
    """Times t_0 = 1 > ... > t_T = 0 of a `steps`-step sampler: diffusers' FlowMatchEulerDiscreteScheduler sigmas,
    or for a two-time net its FlowMapEulerDiscreteScheduler sigmas (the uniform grid the sample stage steps)."""
    scheduler = FlowMapEulerDiscreteScheduler() if two_time else FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(steps)
    return scheduler.sigmas.float().cpu()


def expand_like(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector shaped to broadcast against a batch `like`."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first."""
    return x.flatten(1).mean(1)


def sde_noise_scale(t: torch.Tensor, t_second: float, noise_level: float) -> torch.Tensor:
    """Flow-GRPO's s_t = a sqrt(t / (1 - t)), with t = 1 in the denominator replaced by the grid's second time."""
    denominator = 1.0 - torch.where(t >= 1.0, torch.full_like(t, t_second), t)
    return noise_level * torch.sqrt(t / denominator)


@dataclass(frozen=True)
class SDEStep:
    """Mean and standard deviation of one Gaussian transition x_t -> x_{t_next}."""

    mean: torch.Tensor
    std: torch.Tensor
    noise_scale: torch.Tensor
    """s_t (the KL of Flow-GRPO divides by 2 s_t^2, without the step size)."""


def sde_step(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, t_second: float,
             noise_level: float) -> SDEStep:
    """Flow-GRPO's SDE with the ODE's marginals (per-sample t, t_next); noise_level 0 is the Euler ODE step.

    mean = x (1 + s^2 dt / (2t)) + v (1 + s^2 (1 - t) / (2t)) dt,  std = s sqrt(-dt),  dt = t_next - t.
    """
    t, t_next = t.float(), t_next.float()
    s = sde_noise_scale(t, t_second, noise_level)
    dt = expand_like(t_next - t, x)
    se, te = expand_like(s, x), expand_like(t, x)
    mean = x * (1 + se**2 / (2 * te) * dt) + v.float() * (1 + se**2 * (1 - te) / (2 * te)) * dt
    return SDEStep(mean, expand_like(s, x) * torch.sqrt(-dt), s)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over dimensions of log N(x; mean, std^2) (Flow-GRPO averages over dimensions)."""
    std = std.expand_as(mean)
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return per_sample_mean(log_density)


def velocity(net: NetFn, x: torch.Tensor, t: torch.Tensor, cond: Any, r: torch.Tensor | None = None) -> torch.Tensor:
    """The network's velocity at internal times t (per sample) in float32.

    With `r`, a two-time network's mean velocity over [r, t] (one-time networks have one velocity)."""
    if r is None:
        return net(x, diffusers_timestep_from_t(t.to(x.device)), cond).float()
    return net(x, diffusers_timestep_from_t(t.to(x.device)), cond, diffusers_timestep_from_t(r.to(x.device))).float()


@dataclass
class Rollout:
    """Samples of one rollout batch, row-major by group: row i belongs to group i // group_size."""

    x0: torch.Tensor
    cond: Any
    grid: torch.Tensor
    states: torch.Tensor | None = None
    """(T + 1, N, ...) states on the grid (states[0] noise, states[T] = x0), kept for trajectory methods."""
    log_probs: torch.Tensor | None = None
    """(T, N) log-probabilities of each transition under the rollout policy."""
    extras: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def rollout(net: NetFn, cond: Any, shape: tuple[int, ...], grid: torch.Tensor, noise_level: float,
            gen: torch.Generator, device: torch.device, keep_states: bool = False,
            rows: slice | None = None, two_time: bool = False) -> Rollout:
    """Integrate the SDE (noise_level 0: the Euler ODE) from noise to data, storing what trajectory methods need.

    `two_time`: the net is a flow map, stepped with its mean velocity over each step (`step_end`).
    `rows` computes only those rows of the batch (one rank's share; the Rollout then holds them alone).
    The noise is drawn for the whole batch, so every row's noise is the same whichever rows are computed.
    """
    rows = rows or slice(0, shape[0])
    cond = select_conditions(cond, torch.arange(shape[0])[rows])
    x = torch.randn(shape, generator=gen)[rows].to(device)
    n = x.shape[0]
    states, log_probs = [x], []
    t_second = float(grid[1])
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        tt, tn = t.expand(n).to(device), t_next.expand(n).to(device)
        step = sde_step(x, velocity(net, x, tt, cond, step_end(tn, two_time)), tt, tn, t_second, noise_level)
        if noise_level > 0:
            x = step.mean + step.std * torch.randn(shape, generator=gen)[rows].to(device)
            log_probs.append(gaussian_log_prob(x, step.mean, step.std))
        else:
            x = step.mean
        states.append(x)
    if not keep_states:
        return Rollout(x, cond, grid)
    return Rollout(x, cond, grid, torch.stack(states), torch.stack(log_probs) if log_probs else None)


def step_end(t_next: torch.Tensor, two_time: bool) -> torch.Tensor | None:
    """The `r` of `velocity` for a step to t_next: t_next for a two-time net, None (v at t) for a one-time one."""
    return t_next if two_time else None


def group_advantages(rewards: torch.Tensor, group_size: int, global_std: bool) -> torch.Tensor:
    """(R - group mean) / std over rows of (K, N) rewards; std of the whole batch or of each group."""
    grouped = rewards.reshape(rewards.shape[0], -1, group_size)
    centred = grouped - grouped.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True).unsqueeze(-1) if global_std else grouped.std(-1, keepdim=True)
    return (centred / (std + 1e-4)).reshape(rewards.shape)


def stratified_times(n: int, k: int, gen: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    """(n, k) times: one uniform draw in each of k equal strata of (0, 1), then the SD3 shift s u / (1 + (s-1) u)."""
    u = (torch.arange(k) + torch.rand(n, k, generator=gen)) / k
    return (shift * u / (1 + (shift - 1) * u)).clamp(1e-4, 1 - 1e-4)


def noised(x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = (1 - t) x0 + t eps with fresh eps; returns (x_t, eps)."""
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)
    te = expand_like(t.to(x0.device), x0)
    return (1 - te) * x0 + te * eps, eps

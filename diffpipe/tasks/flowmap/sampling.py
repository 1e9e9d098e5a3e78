"""Few-step sampling: flow-map steps through diffusers' FlowMapEulerDiscreteScheduler, consistency multistep,
and the teacher's own ODE solver as the baseline.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMapEulerDiscreteScheduler

from diffpipe.tasks import timeconv

from ..objectives import NetFn
from . import TwoTimeNet, VelocityFn
from .trajectories import teacher_trajectory


@torch.no_grad()
def sample_flow_map(net: TwoTimeNet, noise: torch.Tensor, steps: int = 1, cond: torch.Tensor | None = None, *,
                    shift: float = 1.0, times: list[float] | None = None) -> torch.Tensor:
    """k-step flow-map sampling from noise at t = 1: z_r = z_t - (t - r) u(z_t, r, t) on the scheduler's grid.

    `times` (decreasing, first 1.0, final 0 implied) overrides the uniform grid of `steps` steps;
    `shift` is the scheduler's resolution shift t -> s t / (1 + (s - 1) t).
    """
    scheduler = FlowMapEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(None if times else steps, device=noise.device, sigmas=times)
    sigmas = scheduler.sigmas.to(device=noise.device, dtype=noise.dtype)
    x = noise
    for i, timestep in enumerate(scheduler.timesteps):
        t, r = sigmas[i].expand(x.shape[0]), sigmas[i + 1].expand(x.shape[0])
        u = net(x, r, t, cond)
        r_timestep = scheduler.sigmas[i + 1] * scheduler.config.num_train_timesteps
        x = scheduler.step(u, timestep, x, r_timestep=r_timestep).prev_sample
    return x


@torch.no_grad()
def sample_consistency(
    net: TwoTimeNet, noise: torch.Tensor, steps: int = 1, cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None, times: list[float] | None = None,
) -> torch.Tensor:
    """Consistency-model multistep sampling: jump to data with u(x, 0, t), re-noise to the next time.

    For nets trained only on r = 0 jumps (consistency distillation); `times` default to a uniform grid.
    """
    grid = torch.tensor(times) if times else torch.linspace(1.0, 0.0, steps + 1)[:-1]
    grid = grid.to(device=noise.device, dtype=noise.dtype)
    x, n = noise, noise.shape[0]
    for i, t in enumerate(grid):
        data = x - t * net(x, torch.zeros(n, dtype=x.dtype, device=x.device), t.expand(n), cond)
        if i + 1 < len(grid):
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = (1 - grid[i + 1]) * data + grid[i + 1] * eps
    return data


def sample_teacher(teacher: VelocityFn, noise: torch.Tensor, steps: int, cond: torch.Tensor | None = None, *,
                   solver: str = "FlowMatchEulerDiscreteScheduler",
                   solver_options: dict[str, Any] | None = None) -> torch.Tensor:
    """Endpoint of the teacher's ODE solve with a diffusers flow solver (or "rk4") in `steps` model calls."""
    states, _ = teacher_trajectory(teacher, noise, cond, solver=solver, steps=steps,
                                   solver_options=solver_options)
    return states[-1]


def sample_two_time(net: NetFn, kind: str, scheduler: FlowMapEulerDiscreteScheduler, steps: int,
                    noise: torch.Tensor, cond: torch.Tensor | None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """k-step sampling of a two-time domain NetFn `net(x, timestep, cond, r_timestep)` (diffusers times).

    kind `flow_map`: flow-map steps on the scheduler's grid (its `shift` applies); kind `consistency`:
    consistency multistep sampling (jump to data, re-noise) on the uniform grid.
    """
    def two_time(x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return net(x, timeconv.diffusers_timestep_from_t(t), c, timeconv.diffusers_timestep_from_t(r))

    if kind == "consistency":
        return sample_consistency(two_time, noise, steps, cond, generator)
    return sample_flow_map(two_time, noise, steps, cond, shift=scheduler.config.shift)

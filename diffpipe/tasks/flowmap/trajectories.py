"""The frozen teacher's probability-flow ODE solved from noise: what CMT regresses and what teachers sample with.

A solver is a diffusers flow scheduler of order 1 (states labelled with the times it actually used,
`scheduler.sigmas`) or `rk4`, exact RK4 on a uniform grid for teachers cheap enough to solve exactly.
"""

from __future__ import annotations

from typing import Any

import diffusers
import torch
from diffusers import SchedulerMixin

from diffpipe.errors import SpecError

from . import VelocityFn, rk4_mean_velocity

EXACT_SOLVER = "rk4"
FLOW_SIGMA_DEFAULTS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
"""Constructor defaults that make a multistep diffusers solver (DPM-Solver, UniPC) integrate a flow ODE."""


def make_flow_solver(name: str, options: dict[str, Any] | None = None) -> SchedulerMixin:
    """A diffusers scheduler by class name, set up to integrate a velocity (flow-matching) ODE."""
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise SpecError("solver", "not a diffusers scheduler class",
                        expected="e.g. DPMSolverMultistepScheduler", found=name)
    defaults = {} if name.startswith("FlowMatch") else FLOW_SIGMA_DEFAULTS
    try:
        scheduler = cls(**{**defaults, **(options or {})})
    except TypeError as err:
        raise SpecError("solver", "the scheduler takes no flow-ODE options", found=f"{name}: {err}") from err
    config = scheduler.config
    flow = name.startswith("FlowMatch") or (config.get("use_flow_sigmas") and
                                            config.get("prediction_type") == "flow_prediction")
    if not flow or scheduler.order != 1:
        raise SpecError("solver", "the scheduler must step a velocity ODE once per model call",
                        expected="FlowMatchEulerDiscreteScheduler or a multistep solver with flow sigmas",
                        found=f"{name} (order {scheduler.order}, options {options})")
    return scheduler


@torch.no_grad()
def teacher_trajectory(
    teacher: VelocityFn, noise: torch.Tensor, cond: Any, *,
    solver: str = "FlowMatchEulerDiscreteScheduler", steps: int = 16,
    solver_options: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher ODE solve from `noise`: states (steps + 1, B, ...) and the times (steps + 1,) they sit at.

    `solver` is a diffusers scheduler class name, or "rk4" (uniform grid from 1 to 0, option `substeps`
    RK4 steps per interval) for teachers cheap enough to solve exactly.
    """
    if solver == EXACT_SOLVER:
        return _rk4_trajectory(teacher, noise, cond, steps, **(solver_options or {}))
    scheduler = make_flow_solver(solver, solver_options)
    scheduler.set_timesteps(steps, device=noise.device)
    times = scheduler.sigmas.to(device=noise.device, dtype=noise.dtype)
    x, states = noise, [noise]
    for i, timestep in enumerate(scheduler.timesteps):
        v = teacher(x, times[i].expand(x.shape[0]), cond)
        x = scheduler.step(v.to(x.dtype), timestep, x).prev_sample
        states.append(x)
    return torch.stack(states), times[: len(states)]


def _rk4_trajectory(teacher: VelocityFn, noise: torch.Tensor, cond: Any, steps: int,
                    substeps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=noise.dtype, device=noise.device)
    x, states = noise, [noise]
    for t, r in zip(times[:-1], times[1:], strict=True):
        x = x - (t - r) * rk4_mean_velocity(teacher, x, r, t, cond, substeps)
        states.append(x)
    return torch.stack(states), times

"""`method: cmt`: Consistency Mid-Training (CMT, arXiv 2509.24526), the midtrain stage's method.

A frozen teacher solves its probability-flow ODE from fresh noise on every call (no stored trajectory
set). The student then learns either the consistency form (every trajectory state straight to the
solver's endpoint, sony/cmt) or the flow-map form (the exact average velocity between two trajectory
states, sony/mf-rae). States are labelled with the times the solver actually used (scheduler.sigmas),
which fixes mf-rae's quirk of training on a shifted grid with unshifted time labels.
"""

from __future__ import annotations

from typing import Any

import diffusers
import torch
from diffusers import SchedulerMixin

from diffpipe.errors import SpecError
from diffpipe.schemas.distill import MidtrainStage
from diffpipe.tasks.conditions import select_conditions
from diffpipe.tasks.registry import implements

from . import FlowMapLoss, TwoTimeNet, VelocityFn, bcast, per_sample_mean, rk4_mean_velocity

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


@implements("method", "cmt")
class ConsistencyMidTrainingLoss(FlowMapLoss):
    """CMT loss: trajectories of the frozen teacher's solver from fresh noise as regression targets.

    form="flow_map": random state pairs (i < j) of the trajectories, loss (1/D)|u(x_i, t_j, t_i) - u_ij|^2
    with u_ij = (x_i - x_j) / (t_i - t_j); `pairs` per call (default: the batch size).
    form="consistency": every non-final state, loss (1/D)|x_i - (t_i - t_M) u(x_i, t_M, t_i) - x_M|^2.
    `trajectories` per call default to batch // solver_steps (sony/cmt: 128 // 16 = 8 trajectories);
    trajectory k is conditioned on cond[k % batch].
    """

    needs_teacher = True

    def __init__(self, spec: MidtrainStage, teacher: VelocityFn):
        self.spec, self.teacher, self.form = spec, teacher, spec.form
        self.solver = dict(solver=spec.solver, steps=spec.solver_steps, solver_options=spec.solver_options)
        self.trajectories, self.pairs = spec.trajectories, spec.pairs

    def __call__(self, net: TwoTimeNet, x0: torch.Tensor, cond: Any,
                 generator: torch.Generator) -> torch.Tensor:
        """Per-sample CMT loss (one value per state pair, or per trajectory state in consistency form)."""
        batch = x0.shape[0]
        count = self.trajectories or max(1, batch // self.solver["steps"])
        noise = torch.randn((count, *x0.shape[1:]), generator=generator, dtype=x0.dtype).to(x0.device)
        traj_cond = select_conditions(cond, torch.arange(count) % batch)
        states, times = teacher_trajectory(self.teacher, noise, traj_cond, **self.solver)
        if self.form == "consistency":
            return self._consistency(net, states, times, traj_cond)
        return self._flow_map(net, states, times, traj_cond, self.pairs or batch, generator)

    @staticmethod
    def _flow_map(net: TwoTimeNet, states: torch.Tensor, times: torch.Tensor, cond: Any,
                  pairs: int, generator: torch.Generator) -> torch.Tensor:
        upper = torch.triu_indices(states.shape[0], states.shape[0], offset=1)
        pick = torch.randint(0, upper.shape[1], (pairs,), generator=generator)
        i, j = (idx.to(states.device) for idx in upper[:, pick])
        k = torch.randint(0, states.shape[1], (pairs,), generator=generator).to(states.device)
        x_t, x_r, t, r = states[i, k], states[j, k], times[i], times[j]
        target = (x_t - x_r) / bcast(t - r, x_t)
        pred = net(x_t, r, t, select_conditions(cond, k.cpu()))
        return per_sample_mean((pred - target) ** 2)

    @staticmethod
    def _consistency(net: TwoTimeNet, states: torch.Tensor, times: torch.Tensor,
                     cond: Any) -> torch.Tensor:
        steps, count = states.shape[0] - 1, states.shape[1]
        x_t = states[:-1].flatten(0, 1)
        t = times[:-1].repeat_interleave(count)
        r = times[-1].expand(t.shape[0])
        end = states[-1].repeat(steps, *([1] * (states.dim() - 2)))
        tiled = select_conditions(cond, torch.arange(steps * count) % count)  # rows follow states[:-1].flatten(0, 1)
        pred = x_t - bcast(t - r, x_t) * net(x_t, r, t, tiled)
        return per_sample_mean((pred - end) ** 2)

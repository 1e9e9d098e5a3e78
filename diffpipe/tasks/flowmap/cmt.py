"""`method: cmt`: Consistency Mid-Training (CMT, arXiv 2509.24526), the midtrain stage's method.

A frozen teacher solves its probability-flow ODE from fresh noise on every call (no stored trajectory
set). The student then learns either the consistency form (every trajectory state straight to the
solver's endpoint, sony/cmt) or the flow-map form (the exact average velocity between two trajectory
states, sony/mf-rae). States are labelled with the times the solver actually used (scheduler.sigmas),
which fixes mf-rae's quirk of training on a shifted grid with unshifted time labels.

Across processes every rank draws the global batch's noise, pairs and times; each rank solves its
rows of the trajectories (gathered: every rank holds all of them, as the pairs pick states of any
trajectory) and regresses its rows of the pairs or states (`distributed.local_rows`; whole on every
rank where a count does not split).
"""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.schemas.distill import MidtrainStage
from diffpipe.tasks.conditions import select_conditions
from diffpipe.tasks.distributed import all_gather_rows, local_rows
from diffpipe.tasks.registry import implements

from . import FlowMapLoss, TwoTimeNet, VelocityFn, bcast, per_sample_mean
from .trajectories import teacher_trajectory


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
        own, own_cond = local_rows(noise, traj_cond)  # this rank's trajectories
        states, times = teacher_trajectory(self.teacher, own, own_cond, **self.solver)
        if own.shape[0] < count:
            states = all_gather_rows(states, dim=1)
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
        x_t, x_r, t, r, k = local_rows(states[i, k], states[j, k], times[i], times[j], k)  # this rank's pairs
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
        x_t, t, r, end, tiled = local_rows(x_t, t, r, end, tiled)  # this rank's states
        pred = x_t - bcast(t - r, x_t) * net(x_t, r, t, tiled)
        return per_sample_mean((pred - end) ** 2)

"""`method: consistency`: consistency distillation (CD, Song et al. 2023) for two-time networks.

The consistency function is the flow map to data, f(x_t, t) = x_t - t u(x_t, 0, t), so f(x, 0) = x
holds by construction. Each call: a random pair of adjacent levels t_n < t_{n+1} of a Karras grid
(EDM sigmas converted to internal time), x_{t_{n+1}} from real data, one teacher solver step down to
t_n, and the distance between f_theta(x_{t_{n+1}}) and f_target(x_hat_{t_n}). The target network is
an EMA of the online weights (CM: decay 0.95) or, with target_ema = 0, the online net under stop-grad
(iCT / ECT).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from diffpipe.schemas.distill import ConsistencyDistill
from diffpipe.tasks import timeconv
from diffpipe.tasks.distributed import local_rows
from diffpipe.tasks.registry import implements

from . import FlowMapLoss, TwoTimeNet, VelocityFn, bcast, per_sample_mean

OneStepSolver = Literal["euler", "heun"]


def karras_times(levels: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0) -> torch.Tensor:
    """Karras et al. noise levels as increasing internal times t = sigma / (1 + sigma)."""
    ramp = torch.linspace(0, 1, levels, dtype=torch.float64)
    sigma = (sigma_min ** (1 / rho) + ramp * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho
    return timeconv.t_from_sigma(sigma)


@torch.no_grad()
def solver_step(teacher: VelocityFn, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                cond: torch.Tensor | None, solver: OneStepSolver = "heun") -> torch.Tensor:
    """One Euler or Heun step of the teacher's ODE from per-sample times t down to r."""
    gap = bcast(t - r, x)
    v = teacher(x, t, cond)
    euler = x - gap * v
    if solver == "euler":
        return euler
    return x - gap * 0.5 * (v + teacher(euler, r, cond))


@implements("method", "consistency")
class ConsistencyDistillationLoss(FlowMapLoss):
    """CD loss against one teacher solver step between adjacent Karras levels (defaults: CM CIFAR-10 CD).

    With target_ema > 0 the target network is a copy of `net` made on the first call and moved towards
    the online weights at the start of every later call, i.e. once per optimiser step when the loss is
    called once per step; `loop_state` checkpoints it with the training loop so resumed runs stay exact.
    """

    needs_teacher = True

    def __init__(self, spec: ConsistencyDistill, teacher: VelocityFn):
        self.spec, self.teacher, self.solver, self.target_ema = spec, teacher, spec.solver, spec.target_ema
        self.times = karras_times(spec.levels, spec.sigma_min, spec.sigma_max, spec.rho)
        self.distance, self.weighting = spec.distance, spec.weighting
        self.target: nn.Module | None = None

    def loop_state(self, student: nn.Module) -> TargetNetworkState:
        """The EMA target network as training-loop state."""
        return TargetNetworkState(self, student)

    def _target_net(self, net: TwoTimeNet) -> TwoTimeNet:
        if self.target_ema == 0.0:
            return net
        if self.target is None:
            self.target = copy.deepcopy(net).requires_grad_(False)
        else:
            with torch.no_grad():
                for p_target, p in zip(self.target.parameters(), net.parameters(), strict=True):
                    p_target.lerp_(p, 1.0 - self.target_ema)
        return self.target

    def target_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the EMA target network (empty before the first call or with target_ema = 0)."""
        return {} if self.target is None else self.target.state_dict()

    def load_target_state_dict(self, net: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Restore the EMA target from a checkpoint (`net` gives its architecture)."""
        if state:
            self.target = copy.deepcopy(net).requires_grad_(False)
            self.target.load_state_dict(state)

    def __call__(self, net: TwoTimeNet, x0: torch.Tensor, cond: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        """Per-sample CD loss on a fresh draw of levels and noise."""
        n = x0.shape[0]
        level = torch.randint(0, self.times.shape[0] - 1, (n,), generator=generator)
        t_lo, t_hi = (self.times[idx].to(device=x0.device, dtype=x0.dtype) for idx in (level, level + 1))
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x0, t_lo, t_hi, eps, cond = local_rows(x0, t_lo, t_hi, eps, cond)  # drawn for the global batch
        x_hi = (1 - bcast(t_hi, x0)) * x0 + bcast(t_hi, x0) * eps
        x_lo = solver_step(self.teacher, x_hi, t_hi, t_lo, cond, self.solver)
        target_net = self._target_net(net)
        with torch.no_grad():
            target = x_lo - bcast(t_lo, x0) * target_net(x_lo, torch.zeros_like(t_lo), t_lo, cond)
        pred = x_hi - bcast(t_hi, x0) * net(x_hi, torch.zeros_like(t_hi), t_hi, cond)
        if self.distance == "l2":
            loss = per_sample_mean((pred - target) ** 2)
        else:
            c = 0.00054 * math.sqrt(x0[0].numel())
            loss = ((pred - target).flatten(1).pow(2).sum(1) + c * c).sqrt() - c
        return loss / (t_hi - t_lo) if self.weighting == "inverse_gap" else loss


@dataclass
class TargetNetworkState:
    """The EMA target network of consistency distillation as loop state, so resumed runs stay exact."""

    loss: ConsistencyDistillationLoss
    student: nn.Module

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The target's weights (empty before its first update)."""
        return self.loss.target_state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the target's weights."""
        self.loss.load_target_state_dict(self.student, state)

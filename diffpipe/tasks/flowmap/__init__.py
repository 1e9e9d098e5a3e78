"""Flow maps: analytic ring teacher, MeanFlow, Consistency Mid-Training, consistency distillation, samplers.

Time convention throughout (diffpipe.tasks.timeconv): x_t = (1 - t) x0 + t eps, t = 0 is data. A
two-time network is called as `net(x_t, r, t, cond)` with per-sample r <= t in [0, 1] and returns the
mean velocity u, so z_r = z_t - (t - r) u. A teacher is a `VelocityFn`: `teacher(x_t, t, cond)` -> v.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

TwoTimeNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""net(x_t, r, t, cond) -> mean velocity u over [r, t] (same shape as x_t)."""

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""teacher(x_t, t, cond) -> instantaneous velocity v = E[eps - x0 | x_t] (internal convention)."""


class FlowMapLoss:
    """What the midtrain and distill stages ask of a method's loss: `loss(student, x0, cond, generator)` (B,).

    A method module registers one subclass under its `method` name; it is built as `cls(spec)`, or
    `cls(spec, teacher)` when `needs_teacher` (the frozen teacher's velocity in internal time).
    """

    needs_teacher: ClassVar[bool] = False
    """Whether the loss is built with the teacher's velocity."""

    def loop_state(self, student: torch.nn.Module) -> Any:
        """State the training loop must checkpoint besides the student (None: nothing)."""
        return None


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector (B,) so it broadcasts against a batch `like` (B, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def per_sample_mean(err: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return err.flatten(1).mean(1)


def rk4_mean_velocity(velocity: VelocityFn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                      cond: torch.Tensor | None = None, substeps: int = 200) -> torch.Tensor:
    """Average velocity over [r, t] of the ODE dx/dt = velocity, by `substeps` RK4 steps from t down to r.

    Returned as the mean of the RK4 increments, so it is finite (= v) at r = t and differentiable in z, r, t.
    """
    t = t.to(z) * torch.ones(z.shape[0], dtype=z.dtype, device=z.device)
    h = (t - r.to(z)) / substeps
    hb = bcast(h, z)
    x, total = z, torch.zeros_like(z)
    for i in range(substeps):
        s = t - i * h
        k1 = velocity(x, s, cond)
        k2 = velocity(x - 0.5 * hb * k1, s - 0.5 * h, cond)
        k3 = velocity(x - 0.5 * hb * k2, s - 0.5 * h, cond)
        k4 = velocity(x - hb * k3, s - h, cond)
        increment = (k1 + 2 * k2 + 2 * k3 + k4) / 6
        x = x - hb * increment
        total = total + increment
    return total / substeps

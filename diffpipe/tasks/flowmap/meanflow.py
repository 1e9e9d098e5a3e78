"""`method: meanflow`: MeanFlow training on data (Geng et al. 2025, arXiv 2505.13447).

The MeanFlow identity u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t), with the total derivative
taken along dz/dt = v, dr/dt = 0, turns into a regression target with a stop-gradient. Defaults are
py-meanflow's improved CIFAR recipe ("v1" time sampler). MeanFlow distillation (`meanflow_distill`)
reuses this loss with the teacher's velocity in place of eps - x0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from diffpipe.schemas.distill import MeanFlowOptions
from diffpipe.tasks.distributed import local_rows
from diffpipe.tasks.registry import implements

from ..seeding import seeded
from . import FlowMapLoss, TwoTimeNet, bcast

TimeSampler = Literal["v0", "v1"]
Derivative = Literal["jvp", "finite_difference"]
UFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def logit_normal(n: int, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """n draws of sigmoid(mean + std * N(0, 1))."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def sample_two_times(
    n: int, generator: torch.Generator, *, sampler: TimeSampler = "v1", t_mean: float = -0.6,
    t_std: float = 1.6, r_mean: float = -4.0, r_std: float = 1.6, ratio: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (r, t) with r <= t: independent logit-normal draws, r set to t with probability 1 - ratio.

    v0 (paper): sort the two draws, then set r = t for a (1 - ratio) share.
    v1 (py-meanflow default): set r = t for a (1 - ratio) share, then r = min(t, r).
    """
    t = logit_normal(n, t_mean, t_std, generator)
    r = logit_normal(n, r_mean, r_std, generator)
    differ = torch.rand(n, generator=generator) < ratio
    if sampler == "v0":
        t, r = torch.maximum(t, r), torch.minimum(t, r)
        return torch.where(differ, r, t), t
    return torch.minimum(t, torch.where(differ, r, t)), t


@contextmanager
def shared_randomness(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with the global RNG seeded to `seed` (so dropout masks repeat), restoring it afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), seeded(seed):
        yield


def mean_velocity_and_derivative(
    u_fn: UFn, z: torch.Tensor, t: torch.Tensor, v: torch.Tensor, *, derivative: Derivative = "jvp",
    fd_delta: float = 5e-3, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """u_fn(z, t) (with gradient) and its total time derivative along (dz, dt) = (v, 1) (without gradient).

    `jvp` is one forward-mode pass (torch.func.jvp); `finite_difference` is the central difference
    [u(z + d v, t + d) - u(z - d v, t - d)] / (2 d) with all three evaluations under one dropout seed.
    """
    if derivative == "jvp":
        u, dudt = torch.func.jvp(u_fn, (z, t), (v, torch.ones_like(t)))
        return u, dudt.detach()
    step = bcast(torch.full_like(t, fd_delta), z)
    with shared_randomness(seed, z.device):
        u = u_fn(z, t)
    with torch.no_grad():
        with shared_randomness(seed, z.device):
            plus = u_fn(z + step * v, t + fd_delta)
        with shared_randomness(seed, z.device):
            minus = u_fn(z - step * v, t - fd_delta)
    return u, (plus - minus) / (2 * fd_delta)


def meanflow_target(
    u_fn: UFn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor, **derivative_options
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction u(z, r, t) and the stop-gradient target v - (t - r) du/dt of the MeanFlow identity."""
    u, dudt = mean_velocity_and_derivative(u_fn, z, t, v, **derivative_options)
    return u, (v - bcast(t - r, z) * dudt).detach()


@implements("method", "meanflow")
class MeanFlowLoss(FlowMapLoss):
    """MeanFlow training: one-point velocity eps - x0 in the JVP tangent and the target (py-meanflow)."""

    def __init__(self, spec: MeanFlowOptions):
        self.spec = spec
        self.times = dict(sampler=spec.time_sampler, t_mean=spec.t_mean, t_std=spec.t_std, r_mean=spec.r_mean,
                          r_std=spec.r_std, ratio=spec.ratio)

    def velocity(self, x0: torch.Tensor, eps: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                 cond: torch.Tensor | None) -> torch.Tensor:
        """The velocity used as JVP tangent and in the target: here the conditional eps - x0."""
        return eps - x0

    def per_sample_error(self, net: TwoTimeNet, x0: torch.Tensor, cond: torch.Tensor | None,
                         generator: torch.Generator) -> torch.Tensor:
        """Unweighted per-sample squared error sum |u_theta - sg(u_tgt)|^2 on a fresh (r, t, eps) draw."""
        n, device = x0.shape[0], x0.device
        r, t = (s.to(device=device, dtype=x0.dtype) for s in sample_two_times(n, generator, **self.times))
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(device)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        x0, r, t, eps, cond = local_rows(x0, r, t, eps, cond)  # drawn for the global batch; this rank's rows
        xt = (1 - bcast(t, x0)) * x0 + bcast(t, x0) * eps
        v = self.velocity(x0, eps, xt, t, cond)
        u, target = meanflow_target(lambda z, tt: net(z, r, tt, cond), xt, r, t, v,
                                    derivative=self.spec.derivative, fd_delta=self.spec.fd_delta, seed=seed)
        err = u - target
        return err.to(torch.promote_types(err.dtype, torch.float32)).pow(2).flatten(1).sum(1)

    def __call__(self, net: TwoTimeNet, x0: torch.Tensor, cond: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        """Per-sample loss with py-meanflow's adaptive weight: E / sg(E + norm_eps)^norm_p."""
        return self.adaptive_weight(self.per_sample_error(net, x0, cond, generator))

    def adaptive_weight(self, err: torch.Tensor) -> torch.Tensor:
        """py-meanflow's weighting of per-sample errors E: E / sg(E + norm_eps)^norm_p (p = 0: unweighted)."""
        return err / (err.detach() + self.spec.norm_eps) ** self.spec.norm_p

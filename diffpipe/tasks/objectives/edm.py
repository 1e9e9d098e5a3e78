"""EDM (Karras et al. 2022): the preconditioned denoiser with log-normal noise levels."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import EDMEulerScheduler

from diffpipe.schemas import EDM
from diffpipe.tasks import timeconv
from diffpipe.tasks.distributed import local_rows
from diffpipe.tasks.registry import implements

from . import NetFn, bcast, per_sample_mean


@implements("objective", "edm")
class EDMLoss:
    """EDM denoiser loss with diffusers' EDM preconditioning helpers (so training and sampling agree)."""

    def __init__(self, spec: EDM):
        self.spec = spec
        self.precond = EDMEulerScheduler(sigma_data=spec.sigma_data, sigma_min=spec.sigma_min, sigma_max=spec.sigma_max)

    def __call__(self, net: NetFn, x0: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        """Per-sample weighted denoising error at a fresh (sigma, eps) draw."""
        n, sd = x0.shape[0], self.spec.sigma_data
        sigma = (self.spec.p_mean + self.spec.p_std * torch.randn(n, generator=gen)).exp().to(x0.device)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        x0, sigma, eps, labels = local_rows(x0, sigma, eps, labels)
        x_sigma = x0 + bcast(sigma, x0) * eps
        denoised = edm_denoise(net, self.precond, x_sigma, sigma, labels)
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
        return weight * per_sample_mean((denoised - x0) ** 2)


def edm_denoise(net: NetFn, precond: EDMEulerScheduler, x_sigma: torch.Tensor, sigma: torch.Tensor,
                labels: Any) -> torch.Tensor:
    """EDM's preconditioned denoiser D(x_sigma; sigma) = c_skip x + c_out F(c_in x, 1000 t) (diffusers' helpers)."""
    s = bcast(sigma, x_sigma)
    out = net(precond.precondition_inputs(x_sigma, s), edm_net_timestep(sigma), labels)
    return precond.precondition_outputs(x_sigma, out.float(), s)


def edm_net_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """Network time input for an EDM noise level: 1000 * t with t = sigma / (1 + sigma)."""
    return timeconv.diffusers_timestep_from_t(timeconv.t_from_sigma(sigma))

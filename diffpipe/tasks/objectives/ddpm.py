"""DDPM: discrete-time VP diffusion with epsilon- or v-prediction, on diffusers' DDPMScheduler."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from diffpipe.schemas import DDPM
from diffpipe.tasks.distributed import local_rows
from diffpipe.tasks.registry import implements

from . import NetFn, per_sample_mean


@implements("objective", "ddpm")
class DDPMLoss:
    """DDPM epsilon- or v-prediction with optional Min-SNR weighting."""

    def __init__(self, spec: DDPM):
        self.spec = spec
        self.scheduler = DDPMScheduler(
            num_train_timesteps=spec.num_train_timesteps, beta_schedule=spec.beta_schedule,
            prediction_type=spec.prediction,
        )

    def __call__(self, net: NetFn, x0: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        """Per-sample (Min-SNR weighted) squared error of the prediction at a fresh (step, eps) draw."""
        n = x0.shape[0]
        t = torch.randint(0, self.spec.num_train_timesteps, (n,), generator=gen).to(x0.device)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        x0, t, eps, labels = local_rows(x0, t, eps, labels)
        xt = self.scheduler.add_noise(x0, eps, t)
        target = eps if self.spec.prediction == "epsilon" else self.scheduler.get_velocity(x0, eps, t)
        loss = per_sample_mean((net(xt, t, labels).float() - target) ** 2)
        if self.spec.min_snr_gamma is not None:
            abar = self.scheduler.alphas_cumprod.to(x0.device)[t]
            snr = abar / (1 - abar)
            clipped = snr.clamp(max=self.spec.min_snr_gamma)
            loss = loss * (clipped / snr if self.spec.prediction == "epsilon" else clipped / (snr + 1))
        return loss

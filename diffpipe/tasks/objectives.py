"""Training losses of the three pretraining objectives and how each drives a diffusers scheduler.

Every objective calls the network as `net(x, timestep, labels)`. The timestep the network sees is
the diffusers convention of the objective's schedulers (FM: 1000 t; DDPM: the integer step), except
EDM, whose log-sigma noise input is mapped to the FM value 1000 sigma / (1 + sigma) so every network
sees one embedding range. Per-sample losses are returned (EDM style).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import diffusers
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, SchedulerMixin

from diffpipe.errors import SpecError
from diffpipe.schemas import DDPM, EDM, FlowMatching, Objective, Regression
from diffpipe.schemas.reasoning import MaskedDiffusion

from . import timeconv
from .mdlm import pretraining_plan, weighted_token_logps

NetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _per_sample_mean(err: torch.Tensor) -> torch.Tensor:
    return err.flatten(1).mean(1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class FlowMatchingLoss:
    """Rectified-flow velocity regression: |v(x_t, t) - (eps - x0)|^2."""

    def __init__(self, spec: FlowMatching):
        self.spec = spec

    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Training times from the configured density."""
        if self.spec.time_sampling == "uniform":
            return torch.rand(n, generator=gen)
        return torch.sigmoid(self.spec.logit_mean + self.spec.logit_std * torch.randn(n, generator=gen))

    def __call__(self, net: NetFn, x0: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        t = self.sample_t(x0.shape[0], gen).to(x0.device)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        xt = (1 - _bcast(t, x0)) * x0 + _bcast(t, x0) * eps
        pred = net(xt, timeconv.diffusers_timestep_from_t(t), labels)
        return _per_sample_mean((pred.float() - (eps - x0)) ** 2)


class DDPMLoss:
    """DDPM epsilon- or v-prediction with optional Min-SNR weighting, on diffusers' DDPMScheduler."""

    def __init__(self, spec: DDPM):
        self.spec = spec
        self.scheduler = DDPMScheduler(
            num_train_timesteps=spec.num_train_timesteps, beta_schedule=spec.beta_schedule,
            prediction_type=spec.prediction,
        )

    def __call__(self, net: NetFn, x0: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        n = x0.shape[0]
        t = torch.randint(0, self.spec.num_train_timesteps, (n,), generator=gen).to(x0.device)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        xt = self.scheduler.add_noise(x0, eps, t)
        target = eps if self.spec.prediction == "epsilon" else self.scheduler.get_velocity(x0, eps, t)
        loss = _per_sample_mean((net(xt, t, labels).float() - target) ** 2)
        if self.spec.min_snr_gamma is not None:
            abar = self.scheduler.alphas_cumprod.to(x0.device)[t]
            snr = abar / (1 - abar)
            clipped = snr.clamp(max=self.spec.min_snr_gamma)
            loss = loss * (clipped / snr if self.spec.prediction == "epsilon" else clipped / (snr + 1))
        return loss


class EDMLoss:
    """EDM denoiser loss with diffusers' EDM preconditioning helpers (so training and sampling agree)."""

    def __init__(self, spec: EDM):
        self.spec = spec
        self.precond = EDMEulerScheduler(sigma_data=spec.sigma_data, sigma_min=spec.sigma_min, sigma_max=spec.sigma_max)

    def __call__(self, net: NetFn, x0: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        n, sd = x0.shape[0], self.spec.sigma_data
        sigma = (self.spec.p_mean + self.spec.p_std * torch.randn(n, generator=gen)).exp().to(x0.device)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        x_sigma = x0 + _bcast(sigma, x0) * eps
        denoised = edm_denoise(net, self.precond, x_sigma, sigma, labels)
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
        return weight * _per_sample_mean((denoised - x0) ** 2)


class RegressionLoss:
    """Deterministic regression |net(0, 0, cond) - x0|^2: the same backbone without noise."""

    def __init__(self, spec: Regression):
        self.spec = spec

    def __call__(self, net: NetFn, x0: torch.Tensor, cond: Any, gen: torch.Generator) -> torch.Tensor:
        zeros_t = torch.zeros(x0.shape[0], device=x0.device)
        return _per_sample_mean((net(torch.zeros_like(x0), zeros_t, cond).float() - x0) ** 2)


class MaskedDiffusionLoss:
    """Masked diffusion on tokens: per sequence, (1/(t L)) sum over masked completion tokens of -log p.

    Here `net` is the token model itself (ids -> logits), `x0` the completions and `cond` the prompts.
    """

    def __init__(self, spec: MaskedDiffusion):
        self.spec = spec

    def __call__(self, net: Any, x0: torch.Tensor, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        mask_token_id = getattr(getattr(net, "config", None), "mask_token_id", None)
        if mask_token_id is None or cond is None:
            raise SpecError("objective.kind", "masked_diffusion trains token models on prompt/completion data",
                            "model.arch mdlm with countdown or sudoku data", type(net).__name__)
        plan = pretraining_plan(x0.shape[0], x0.shape[1], gen, self.spec.t_min).to(x0.device)
        return -weighted_token_logps(net, cond, x0, plan, mask_token_id).sum(-1)


def edm_denoise(net: NetFn, precond: EDMEulerScheduler, x_sigma: torch.Tensor, sigma: torch.Tensor,
                labels: Any) -> torch.Tensor:
    """EDM's preconditioned denoiser D(x_sigma; sigma) = c_skip x + c_out F(c_in x, 1000 t) (diffusers' helpers)."""
    s = _bcast(sigma, x_sigma)
    out = net(precond.precondition_inputs(x_sigma, s), edm_net_timestep(sigma), labels)
    return precond.precondition_outputs(x_sigma, out.float(), s)


def edm_net_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """Network time input for an EDM noise level: 1000 * t with t = sigma / (1 + sigma)."""
    return timeconv.diffusers_timestep_from_t(timeconv.t_from_sigma(sigma))


def make_loss(spec: Objective) -> Callable[..., torch.Tensor]:
    """The per-sample training loss of an objective."""
    losses = {"flow_matching": FlowMatchingLoss, "ddpm": DDPMLoss, "edm": EDMLoss, "regression": RegressionLoss,
              "masked_diffusion": MaskedDiffusionLoss}
    return losses[spec.kind](spec)


def scheduler_defaults(spec: Objective, name: str) -> dict[str, Any]:
    """Constructor arguments that make scheduler `name` match how `spec` was trained."""
    if isinstance(spec, FlowMatching):
        if name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
            return {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}
        return {}
    if isinstance(spec, DDPM):
        out = {"num_train_timesteps": spec.num_train_timesteps, "beta_schedule": spec.beta_schedule,
               "prediction_type": spec.prediction}
        if "timestep_spacing" in inspect.signature(getattr(diffusers, name).__init__).parameters:
            out["timestep_spacing"] = "trailing"  # start sampling at the last training step (pure noise)
        return out
    if isinstance(spec, EDM):
        return {"sigma_min": spec.sigma_min, "sigma_max": spec.sigma_max, "sigma_data": spec.sigma_data}
    return {}


def make_scheduler(spec: Objective, name: str | None, options: dict[str, Any]) -> SchedulerMixin | None:
    """A diffusers scheduler configured for the objective, with user options on top (None: regression)."""
    if isinstance(spec, Regression):
        return None
    name = name or spec.default_scheduler
    cls = getattr(diffusers, name)
    return cls(**{**scheduler_defaults(spec, name), **options})


def net_timestep(spec: Objective, scheduler_timestep: torch.Tensor) -> torch.Tensor:
    """The network's time input for a scheduler timestep (EDM: 0.25 ln sigma -> 1000 t)."""
    if isinstance(spec, EDM):
        return edm_net_timestep(torch.exp(4.0 * scheduler_timestep.float()))
    return scheduler_timestep

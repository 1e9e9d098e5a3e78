"""Any pretrained diffusion model as a velocity teacher in the internal time convention (docs/time-convention.md).

A teacher is a `VelocityFn` v(z_t, t) = E[eps - x0 | z_t] with z_t = (1 - t) x0 + t eps. A flow-matching
network predicts it directly (at the diffusers timestep 1000 t). An EDM or DDPM network predicts the same
posterior at the same signal-to-noise ratio in its own convention: the state is rescaled into that
convention (timeconv), the network's prediction is turned into x0_hat, and v = (z_t - x0_hat) / t, which
is exactly eps_hat - x0_hat because z_t = (1 - t) x0_hat + t eps_hat. Noise levels outside the range the
network was trained on (EDM above sigma_max, i.e. t = 1 exactly; DDPM beyond its first or last step) are
clamped to the range for the network call.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, EDMEulerScheduler

from diffpipe.schemas import DDPM, EDM, FlowMatching, Objective
from diffpipe.tasks import timeconv
from diffpipe.tasks.objectives import NetFn
from diffpipe.tasks.objectives.edm import edm_denoise

from . import VelocityFn, bcast


def velocity_teacher(objective: Objective, net: NetFn) -> VelocityFn:
    """The velocity in internal time of a network trained with `objective` (flow matching, EDM or DDPM)."""
    if isinstance(objective, FlowMatching):
        return lambda x, t, cond: net(x, timeconv.diffusers_timestep_from_t(t), cond).to(x.dtype)
    if isinstance(objective, EDM):
        return _edm_velocity(objective, net)
    if isinstance(objective, DDPM):
        return _ddpm_velocity(objective, net)
    raise ValueError(f"a {objective.kind} model has no velocity: teachers are flow-matching, EDM or DDPM models")


def _velocity_from_x0(z: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    return (z - x0_hat.to(z.dtype)) / bcast(t, z)


def _edm_velocity(objective: EDM, net: NetFn) -> VelocityFn:
    precond = EDMEulerScheduler(sigma_data=objective.sigma_data, sigma_min=objective.sigma_min,
                                sigma_max=objective.sigma_max)
    t_max = objective.sigma_max / (1.0 + objective.sigma_max)

    def velocity(z: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        t = t * torch.ones(z.shape[0], dtype=z.dtype, device=z.device)
        t_net = t.clamp(max=t_max)
        sigma = timeconv.sigma_from_t(t_net)
        x0_hat = edm_denoise(net, precond, timeconv.edm_sample_from_fm(z, t_net), sigma, cond)
        return _velocity_from_x0(z, t, x0_hat)

    return velocity


def ddpm_timestep_for_t(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractional DDPM step with the signal-to-noise ratio of internal time t, and its alpha_bar.

    alpha_bar(t) = (1 - t)^2 / ((1 - t)^2 + t^2); the step is interpolated linearly in alpha_bar
    between the scheduler's discrete levels and clamped to [0, N - 1].
    """
    table = alphas_cumprod.to(device=t.device, dtype=torch.float64)
    tt = t.double()
    ascending = table.flip(0)
    target = ((1 - tt) ** 2 / ((1 - tt) ** 2 + tt**2)).clamp(ascending[0], ascending[-1])
    hi = torch.searchsorted(ascending, target).clamp(1, len(table) - 1)
    lo_val, hi_val = ascending[hi - 1], ascending[hi]
    frac = ((target - lo_val) / (hi_val - lo_val)).clamp(0, 1)
    step = (len(table) - 1) - (hi - 1 + frac)
    alpha_bar = lo_val + frac * (hi_val - lo_val)
    return step.to(t.dtype), alpha_bar.to(t.dtype)


def _ddpm_velocity(objective: DDPM, net: NetFn) -> VelocityFn:
    scheduler = DDPMScheduler(num_train_timesteps=objective.num_train_timesteps, beta_schedule=objective.beta_schedule,
                              prediction_type=objective.prediction)

    def velocity(z: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        t = t * torch.ones(z.shape[0], dtype=z.dtype, device=z.device)
        step, alpha_bar = ddpm_timestep_for_t(scheduler.alphas_cumprod, t)
        a, b = bcast(alpha_bar.sqrt(), z), bcast((1 - alpha_bar).sqrt(), z)
        x_vp = timeconv.vp_sample_from_fm(z, alpha_bar)
        out = net(x_vp, step, cond).to(z.dtype)
        x0_hat = (x_vp - b * out) / a if objective.prediction == "epsilon" else a * x_vp - b * out
        return _velocity_from_x0(z, t, x0_hat)

    return velocity

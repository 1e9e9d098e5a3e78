"""One internal time convention and exact converters to the others (docs/time-convention.md).

Internal convention (flow matching / rectified flow): x_t = (1 - t) x0 + t eps, t in [0, 1],
t = 0 is data, the velocity is v = eps - x0. Flow maps take (r, t) with r <= t and move z_t to z_r.
Other conventions are converted here and nowhere else:

- EDM / VE: x_sigma = x0 + sigma eps.  sigma = t / (1 - t), x_edm = x_fm / (1 - t).
- VP / DDPM: x = sqrt(abar) x0 + sqrt(1 - abar) eps.  t = b / (a + b), x_fm = x_vp / (a + b)
  with a = sqrt(abar), b = sqrt(1 - abar).
- diffusers flow-matching schedulers: sigma == t, the model is given timestep = 1000 t.
"""

from __future__ import annotations

import torch

DIFFUSERS_FM_SCALE = 1000.0


def sigma_from_t(t: torch.Tensor) -> torch.Tensor:
    """EDM noise level sigma for internal time t (t < 1)."""
    return t / (1.0 - t)


def t_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """Internal time t for an EDM noise level sigma >= 0."""
    return sigma / (1.0 + sigma)


def edm_sample_from_fm(x_fm: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rescale an internal (FM) state x_t into the EDM state x_sigma at the same noise level."""
    return x_fm / _expand(1.0 - t, x_fm)


def fm_sample_from_edm(x_edm: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Rescale an EDM state x_sigma into the internal (FM) state x_t at the same noise level."""
    return x_edm / _expand(1.0 + sigma, x_edm)


def t_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Internal time t for a VP/DDPM cumulative alpha (abar in (0, 1])."""
    a, b = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    return b / (a + b)


def fm_sample_from_vp(x_vp: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Rescale a VP state into the internal (FM) state at the same signal-to-noise ratio."""
    a, b = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    return x_vp / _expand(a + b, x_vp)


def vp_sample_from_fm(x_fm: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Rescale an internal (FM) state into the VP state at the same signal-to-noise ratio."""
    a, b = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    return x_fm * _expand(a + b, x_fm)


def diffusers_timestep_from_t(t: torch.Tensor) -> torch.Tensor:
    """Timestep value diffusers flow-matching schedulers pass to a model for internal time t."""
    return t * DIFFUSERS_FM_SCALE


def t_from_diffusers_timestep(timestep: torch.Tensor) -> torch.Tensor:
    """Internal time for a diffusers flow-matching scheduler timestep."""
    return timestep / DIFFUSERS_FM_SCALE


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))

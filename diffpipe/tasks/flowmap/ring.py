"""The ring of 8 Gaussians and its exact flow-matching teacher.

Data: equal-weight isotropic Gaussians (std `std`) with means on a circle of radius `radius`.
Internal time convention: x_t = (1 - t) x + t eps. Everything here is closed form except the flow
map, which integrates the exact velocity with fine RK4 (and stays differentiable, so torch.func.jvp
can run through it).
"""

from __future__ import annotations

import math

import torch

from . import rk4_mean_velocity


class AnalyticRing:
    """Ring-of-Gaussians data with the exact posterior mean, velocity and flow map."""

    def __init__(self, radius: float = 2.0, std: float = 0.1, modes: int = 8):
        angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        self.means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        self.std = std

    def sample(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n data points (rows) drawn with `generator`."""
        modes = torch.randint(0, self.means.shape[0], (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.means[modes] + self.std * noise).to(dtype)

    def _components(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Responsibilities w_k(x_t), shifted means (1-t) mu_k and variances Var_k(t), batched over rows."""
        mu = self.means.to(x)
        tt = t.to(x).reshape(-1, 1)
        var = (1 - tt) ** 2 * self.std**2 + tt**2
        shifted = (1 - tt).unsqueeze(-1) * mu
        d2 = ((x.unsqueeze(1) - shifted) ** 2).sum(-1)
        logits = -d2 / (2 * var) - 0.5 * x.shape[1] * var.log()
        return logits.softmax(dim=1), shifted, var

    def posterior_mean(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] for states x (rows) at times t (one per row)."""
        w, shifted, var = self._components(x, t)
        gain = ((1 - t.to(x).reshape(-1, 1)) * self.std**2 / var).unsqueeze(-1)
        per_mode = self.means.to(x) + gain * (x.unsqueeze(1) - shifted)
        return (w.unsqueeze(-1) * per_mode).sum(1)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact velocity E[eps - x0 | x_t] = (x_t - E[x0 | x_t]) / t, in a form finite at t = 0."""
        w, shifted, var = self._components(x, t)
        tt = t.to(x).reshape(-1, 1)
        slope = ((tt - (1 - tt) * self.std**2) / var).unsqueeze(-1)
        per_mode = slope * (x.unsqueeze(1) - shifted) - self.means.to(x)
        return (w.unsqueeze(-1) * per_mode).sum(1)

    def flow_map(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                 substeps: int = 200) -> torch.Tensor:
        """Exact average velocity u(z, r, t) by fine RK4 of the exact velocity (two-time net signature)."""
        return rk4_mean_velocity(self.velocity, z, r, t, cond, substeps)

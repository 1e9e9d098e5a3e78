"""Continuous samplers' shared parts: reference SDEs on [0, 1] and the controlled Euler-Maruyama rollout.

Controlled step: x_{k+1} = x_k + (f_k(x_k) + g_k u_k) dt_k + g_k sqrt(dt_k) z_k. The log ratio of the
reference and controlled transition densities is exact for the discrete chain: -1/2 |u_k|^2 dt_k - u_k . sqrt(dt_k) z_k.
With the discrete chain's own terminal marginal p_K of the reference,
log w = log pi~(x_K) - log p_K(x_K) + sum_k (log ratio)_k has E[w] = Z exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Control = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""u(t, x): times (B,) and states (B, d) -> control (B, d)."""


class Reference:
    """A reference SDE dX = f_t(X) dt + g_t dW on a grid of `steps` Euler steps (uniform unless a subclass
    sets `grid`)."""

    def __init__(self, dim: int, steps: int):
        self.dim, self.steps = dim, steps
        self.grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        """Times t_0 = 0 < ... < t_K = 1 of the Euler chain."""

    def times(self) -> torch.Tensor:
        """Left ends t_k of the steps."""
        return self.grid[:-1]

    def step_sizes(self) -> torch.Tensor:
        """dt_k = t_{k+1} - t_k."""
        return self.grid.diff()

    def diffusion(self, t: float) -> float:
        """g_t."""
        raise NotImplementedError

    def drift(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """f_t(x)."""
        return torch.zeros_like(x)

    def initial(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """X_0 samples."""
        raise NotImplementedError

    def terminal_variance(self) -> float:
        """Per-coordinate variance of X_K under the discrete reference chain (it is Gaussian)."""
        raise NotImplementedError

    def log_terminal(self, x: torch.Tensor) -> torch.Tensor:
        """log p_K(x) of the discrete chain's Gaussian terminal marginal."""
        v = self.terminal_variance()
        return -0.5 * x.double().square().sum(-1) / v - 0.5 * self.dim * math.log(2 * math.pi * v)


VarianceClock = Callable[[torch.Tensor], torch.Tensor]
"""c(t) = int_0^t g_s^2 ds of a driftless reference: increasing, c(0) = 0 (float64 times in, float64 out)."""


def constant_clock(sigma: float) -> VarianceClock:
    """c(t) = sigma^2 t: constant diffusion sigma (PIS)."""
    return lambda t: sigma**2 * t


def ve_clock(sigma_min: float, sigma_max: float) -> VarianceClock:
    """c(t) = sigma_max^2 (1 - (sigma_max / sigma_min)^(-2t)): the clock of the geometric VE diffusion
    g_t = sigma_min (sigma_max / sigma_min)^(1 - t) sqrt(2 ln(sigma_max / sigma_min)) (needs sigma_max > sigma_min)."""
    ratio = sigma_max / sigma_min
    return lambda t: sigma_max**2 * (1 - ratio ** (-2 * t))


class DiracBrownian(Reference):
    """X_0 = 0, f = 0, diffusion given by its variance clock c(t) (constant for PIS, geometric VE for
    adjoint sampling), on a uniform grid in t.

    On each step g is the constant with g_k^2 dt = c(t_{k+1}) - c(t_k), so the chain's variance at t_k is
    exactly c(t_k) and the bridge X_{t_k} | X_K is the exact one. The controlled drift g^2 net moves x by
    (c(t_{k+1}) - c(t_k)) net per step: for the geometric schedule that step shrinks with the variance still
    to come (about 2 ln(sigma_max / sigma_min) / K of it), small where the optimal control is sharp (near
    t = 1) and largest at t = 0, where it is c(1 / K) ~ 2 ln(sigma_max / sigma_min) sigma_max^2 / K.
    """

    def __init__(self, dim: int, steps: int, clock: VarianceClock):
        super().__init__(dim, steps)
        self.levels = clock(self.grid)
        """c(t_k), the chain's variance at each grid time."""
        self.g = (self.levels.diff() / self.step_sizes()).sqrt()

    def diffusion(self, t: float) -> float:
        """g_k on the step that starts at or before t."""
        k = int(torch.searchsorted(self.grid, torch.tensor(t, dtype=torch.float64), right=True)) - 1
        return float(self.g[min(max(k, 0), self.steps - 1)])

    def initial(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """A Dirac at the origin."""
        return torch.zeros(n, self.dim)

    def terminal_variance(self) -> float:
        """c(1) = sum_k g_k^2 dt_k."""
        return float(self.levels[-1])


class StationaryVP(Reference):
    """dX = -1/2 beta(t) X dt + sigma sqrt(beta(t)) dW, X_0 ~ N(0, sigma^2 I) (its stationary law),
    beta linear from beta_start at t = 0 to beta_end at t = 1."""

    def __init__(self, dim: int, steps: int, sigma: float, beta_start: float, beta_end: float):
        super().__init__(dim, steps)
        self.sigma, self.beta_start, self.beta_end = sigma, beta_start, beta_end

    def beta(self, t: float | torch.Tensor) -> float | torch.Tensor:
        """beta(t)."""
        return self.beta_start + (self.beta_end - self.beta_start) * t

    def diffusion(self, t: float) -> float:
        """sigma sqrt(beta(t))."""
        return self.sigma * math.sqrt(self.beta(t))

    def drift(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """-1/2 beta(t) x."""
        return -0.5 * self.beta(t) * x

    def initial(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """N(0, sigma^2 I)."""
        return self.sigma * torch.randn(n, self.dim, generator=gen)

    def terminal_variance(self) -> float:
        """The Euler chain's variance: v <- (1 - beta_k dt / 2)^2 v + sigma^2 beta_k dt from v_0 = sigma^2."""
        v = self.sigma**2
        for t, dt in zip(self.times().tolist(), self.step_sizes().tolist(), strict=True):
            b = self.beta(t)
            v = (1 - 0.5 * b * dt) ** 2 * v + self.sigma**2 * b * dt
        return v

    def decay_to_end(self, t: torch.Tensor) -> torch.Tensor:
        """b_t = exp(-1/2 int_t^1 beta): the mean of X_t given X_1 = x is b_t x (continuous time)."""
        integral = self.beta_start * (1 - t) + 0.5 * (self.beta_end - self.beta_start) * (1 - t.square())
        return torch.exp(-0.5 * integral)


@dataclass
class Rollout:
    """Result of a controlled rollout."""

    x: torch.Tensor
    """Terminal states X_K (B, d)."""
    log_ratio: torch.Tensor
    """log dP_ref / dP_theta along each path (float64)."""
    path: list[torch.Tensor] | None = None
    """X_0 .. X_K when kept."""


def rollout(control: Control, ref: Reference, n: int, gen: torch.Generator, device: torch.device,
            keep_path: bool = False) -> Rollout:
    """Simulate the controlled SDE from the reference's initial law (gradients flow when enabled;
    all noise is drawn from the CPU generator `gen`)."""
    x = ref.initial(n, gen).to(device)
    log_ratio = torch.zeros(n, dtype=torch.float64, device=device)
    path = [x] if keep_path else None
    for t, dt in zip(ref.times().tolist(), ref.step_sizes().tolist(), strict=True):
        g = ref.diffusion(t)
        u = control(torch.full((n,), t, device=device), x)
        z = math.sqrt(dt) * torch.randn(x.shape, generator=gen).to(device)
        x = x + (ref.drift(t, x) + g * u) * dt + g * z
        log_ratio = log_ratio + (-0.5 * u.square().sum(-1) * dt - (u * z).sum(-1)).double()
        if path is not None:
            path.append(x)
    return Rollout(x, log_ratio, path)


def log_weights(target, ref: Reference, run: Rollout) -> torch.Tensor:
    """log w = log pi~(X_K) - log p_K(X_K) + log dP_ref/dP_theta (float64; E[w] = Z)."""
    return target.log_prob(run.x).double() - ref.log_terminal(run.x) + run.log_ratio

"""Adjoint Sampling baseline (Havens et al. 2025): on-policy buffer, regression on the terminal adjoint.

Reference: X_0 = 0, f = 0, geometric VE diffusion g_t on a uniform grid (sde.DiracBrownian). The network
is score-like: the control is g_t net(t, x), the drift g_t^2 net. With no drift and no state cost the lean
adjoint is constant in time, so the regression target of net(t, X_t) is grad r(X_1) = grad log pi~(X_1)
+ X_1 / V (r = log pi~ - log N(0, V), V = int_0^1 g^2; the energy gradient's norm is clipped), with X_t
drawn from the Brownian bridge between 0 and a buffer sample X_1 at a grid time t_k, k uniform (the times
the rollout queries): X_t = s X_1 + sqrt(V s (1 - s)) z, s = c(t_k) / V. No importance weights in the loss.

Stability. The rollout clips the network's output norm at `adjoint_clip`, the bound of its regression
target (the clipped energy gradient). Without it the published MW54 run (sigma_max 3, sigma_min 0.01, 100
steps) diverged: the geometric clock puts c(t_1) ~ 1 into the first Euler step, the network (trained on X_t
near the wells) extrapolates linearly in x outside them, and once a step's displacement times its x-slope
exceeded 2 the explicit Euler chain grew geometrically (|x| ~ 1e6 within 80 optimizer steps; the buffer's
adjoints, clipped, could not pull it back because the network's output was not). With the clip every step
moves x by at most (c(t_{k+1}) - c(t_k)) adjoint_clip, and the same run stays within the wells.
"""

from __future__ import annotations

import torch

from diffpipe.schemas.samplers import AdjointSampler

from ..registry import implements
from .common import CountingTarget, SamplerState, clip_norm
from .sde import DiracBrownian, log_weights, rollout, ve_clock


@implements("method", "adjoint")
class AdjointSampling(SamplerState):
    """Refill a FIFO buffer of terminal samples and their adjoints every `resample_every` steps."""

    def __init__(self, spec: AdjointSampler, target: CountingTarget, model: torch.nn.Module, device: torch.device):
        super().__init__(target)
        self.spec, self.model, self.device = spec, model, device
        self.ref = DiracBrownian(target.dim, spec.sde_steps, ve_clock(spec.sigma_min, spec.sigma_max))
        self.variance = self.ref.terminal_variance()

    def control(self, model: torch.nn.Module):
        """u(t, x) = g_t net(t, x), the network's output norm clipped at `adjoint_clip` (the scale of its
        regression target), so a network extrapolating outside its training region cannot run the chain away."""
        def u(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return self.ref.diffusion(float(t[0])) * clip_norm(model(t, x), self.spec.adjoint_clip)

        return u

    def refill(self, gen: torch.Generator) -> None:
        """Roll out the current model and push (X_1, grad r(X_1)) into the FIFO buffer."""
        with torch.no_grad():
            x = rollout(self.control(self.model), self.ref, self.spec.batch_size, gen, self.device).x
        adjoint = self.target.score(x, self.spec.adjoint_clip) + x / self.variance
        old_x, old_a = self.tensors.get("x"), self.tensors.get("adjoint")
        if old_x is not None:
            x, adjoint = torch.cat([old_x.to(x), x]), torch.cat([old_a.to(adjoint), adjoint])
        self.tensors["x"] = x[-self.spec.buffer_size:].detach().cpu()
        self.tensors["adjoint"] = adjoint[-self.spec.buffer_size:].detach().cpu()

    def bridge(self, x1: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A grid time t_k (k uniform) per row and X_{t_k} from the reference bridge between 0 and x1."""
        k = torch.randint(0, self.ref.steps, (len(x1),), generator=gen)
        s = (self.ref.levels[k] / self.variance).float()[:, None]
        return self.ref.grid[k].float(), s * x1 + (self.variance * s * (1 - s)).sqrt() * torch.randn(
            x1.shape, generator=gen)

    def step_loss(self, gen: torch.Generator) -> torch.Tensor:
        """Bridge regression of net(t, X_t) on the buffer's adjoints."""
        if self.tick(self.spec.resample_every):
            self.refill(gen)
        buf_x, buf_a = self.tensors["x"], self.tensors["adjoint"]
        idx = torch.randint(0, len(buf_x), (self.spec.samples_per_step,), generator=gen)
        t, xt = self.bridge(buf_x[idx], gen)
        pred = self.model(t.to(self.device), xt.to(self.device))
        return (pred - buf_a[idx].to(self.device)).square().sum(-1).mean()

    def sample(self, model: torch.nn.Module, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and post-hoc log importance weights (Girsanov) from `model`."""
        with torch.no_grad():
            run = rollout(self.control(model), self.ref, n, gen, self.device)
            return run.x, log_weights(self.target, self.ref, run)

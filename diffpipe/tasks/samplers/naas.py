"""NAAS (non-equilibrium annealed adjoint sampler), our reconstruction: annealed Langevin reference plus
lean-adjoint matching with a state cost; no importance weights in the loss.

Annealed path pi_t ~ mu^(1-t) pi~^t with mu = N(0, s^2 I). Reference: dX = sigma^2/2 grad log pi_t(X) dt
+ sigma dW, X_0 ~ mu. Tilting it by the work W = int_0^1 d/dt log pi_t(X_t) dt = int (log pi~ - log mu)(X_t) dt
ends at pi (Jarzynski), so the control solves the SOC problem with state cost f = log mu - log pi~ and no
terminal cost. Lean adjoint, integrated backwards along each simulated path with a_1 = 0:
da/dt = -(grad b_t)^T a - grad f, with b_t the reference drift (Hessian-vector products of log pi~);
the control regresses on -sigma a_t. The initial law is not corrected (the optimal one is mu tilted by
exp(-V_0)), a known bias. Post-hoc log w = W + log dP_ref/dP_theta (Riemann sum of W, Euler chain).
"""

from __future__ import annotations

import math

import torch

from diffpipe.schemas.samplers import NAASSampler

from ..registry import implements
from .common import CountingTarget, SamplerState, clip_norm


@implements("method", "naas")
class NAAS(SamplerState):
    """Refill a buffer of (t_k, X_k, -sigma a_k) from fresh paths every `resample_every` steps."""

    def __init__(self, spec: NAASSampler, target: CountingTarget, model: torch.nn.Module, device: torch.device):
        super().__init__(target)
        self.spec, self.model, self.device = spec, model, device
        self.steps, self.dt = spec.sde_steps, 1.0 / spec.sde_steps
        self.prior_var = spec.prior_std**2

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """log mu(x), normalised."""
        return -0.5 * x.double().square().sum(-1) / self.prior_var - 0.5 * x.shape[1] * math.log(
            2 * math.pi * self.prior_var)

    def ref_drift(self, t: float, x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """b_t(x) = sigma^2 / 2 ((1 - t) grad log mu + t grad log pi~)."""
        return 0.5 * self.spec.sigma**2 * ((1 - t) * (-x / self.prior_var) + t * score)

    def simulate(self, model: torch.nn.Module, n: int, gen: torch.Generator):
        """A controlled rollout: the path X_0..X_K, the clipped scores on it, log w."""
        sigma, clip = self.spec.sigma, self.spec.adjoint_clip
        x = (self.spec.prior_std * torch.randn(n, self.target.dim, generator=gen)).to(self.device)
        path, scores = [x], []
        log_ratio = torch.zeros(n, dtype=torch.float64, device=self.device)
        work = torch.zeros(n, dtype=torch.float64, device=self.device)
        for k in range(self.steps):
            t = k * self.dt
            logp, score = self.target.value_and_score(x, clip)
            with torch.no_grad():
                work += self.dt * (logp.double() - self.log_prior(x))
                u = model(torch.full((n,), t, device=self.device), x)
                z = math.sqrt(self.dt) * torch.randn(x.shape, generator=gen).to(self.device)
                x = x + (self.ref_drift(t, x, score) + sigma * u) * self.dt + sigma * z
                log_ratio += (-0.5 * u.square().sum(-1) * self.dt - (u * z).sum(-1)).double()
            path.append(x)
            scores.append(score)
        return path, scores, work + log_ratio

    def refill(self, gen: torch.Generator) -> None:
        """Simulate fresh paths and integrate the lean adjoint backwards along them."""
        path, scores, _ = self.simulate(self.model, self.spec.batch_size, gen)
        sigma, var = self.spec.sigma, self.prior_var
        a = torch.zeros_like(path[0])
        times, states, targets = [], [], []
        for k in reversed(range(self.steps)):
            t, x = k * self.dt, path[k]
            hv = clip_norm(self.target.hvp(x, a), self.spec.adjoint_clip)
            jac_a = 0.5 * sigma**2 * ((1 - t) * (-a / var) + t * hv)
            grad_f = -x / var - scores[k]
            a = a + self.dt * (jac_a + grad_f)
            times.append(torch.full((len(x),), t))
            states.append(x.cpu())
            targets.append((-sigma * a).detach().cpu())
        self.tensors.update(t=torch.cat(times), x=torch.cat(states), target=torch.cat(targets))

    def step_loss(self, gen: torch.Generator) -> torch.Tensor:
        """Adjoint matching: |u(t_k, X_k) + sigma a_k|^2 on random (path, step) pairs of the buffer."""
        if self.tick(self.spec.resample_every):
            self.refill(gen)
        idx = torch.randint(0, len(self.tensors["t"]), (self.spec.samples_per_step,), generator=gen)
        pred = self.model(self.tensors["t"][idx].to(self.device), self.tensors["x"][idx].to(self.device))
        return (pred - self.tensors["target"][idx].to(self.device)).square().sum(-1).mean()

    def sample(self, model: torch.nn.Module, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and post-hoc log weights W + log dP_ref/dP_theta (not used in training)."""
        path, _, log_w = self.simulate(model, n, gen)
        return path[-1].detach(), log_w

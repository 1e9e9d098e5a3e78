"""PDNS (proximal diffusion neural sampler): each buffer refill is a proximal step on path measures.

The refill's weights are softmax(gamma log w) with gamma the largest value in (0, 1] whose estimated
KL(P_theta || P_k) = log mean w^gamma - gamma mean log w stays within `trust_region`; gamma = 1 is the
one-shot target. Continuous targets: the buffer is resampled by those weights and the control regresses
on the bridge score sigma_t grad_{x_t} log p_ref(x_1 | x_t) of a stationary VP reference, for which
X_t | X_1 = x_1 is N(b_t x_1, sigma^2 (1 - b_t^2)), b_t = exp(-1/2 int_t^1 beta). Lattices: MDNS's WDCE
with the tempered weights.
"""

from __future__ import annotations

import torch

from diffpipe.schemas.samplers import PDNSSampler

from ..registry import implements
from .common import CountingTarget, SamplerState, tempered_gamma
from .mdns import MDNS
from .sde import StationaryVP, log_weights, rollout


class DiscretePDNS(MDNS):
    """MDNS with proximal (tempered) buffer weights."""

    def temper(self, log_w: torch.Tensor) -> float:
        """The trust-region gamma of this refill."""
        return tempered_gamma(log_w, self.spec.trust_region)


class ContinuousPDNS(SamplerState):
    """Proximal weighted bridge matching against a stationary VP reference."""

    def __init__(self, spec: PDNSSampler, target: CountingTarget, model: torch.nn.Module, device: torch.device):
        super().__init__(target)
        self.spec, self.model, self.device = spec, model, device
        self.ref = StationaryVP(target.dim, spec.sde_steps, spec.sigma, spec.beta_start, spec.beta_end)

    def refill(self, gen: torch.Generator) -> None:
        """Roll out the current control; keep X_1 and its tempered weights."""
        x, log_w = self.sample(self.model, self.spec.batch_size, gen)
        gamma = tempered_gamma(log_w, self.spec.trust_region)
        self.tensors.update(x=x.cpu(), weights=torch.softmax(gamma * log_w, 0).cpu(), gamma=torch.tensor(gamma))

    def step_loss(self, gen: torch.Generator) -> torch.Tensor:
        """Bridge-score regression on buffer samples resampled by the tempered weights."""
        if self.tick(self.spec.resample_every):
            self.refill(gen)
        idx = torch.multinomial(self.tensors["weights"].double(), self.spec.samples_per_step, replacement=True,
                                generator=gen)
        x1 = self.tensors["x"][idx]
        t = torch.rand(len(idx), generator=gen) * float(self.ref.times()[-1])
        b = self.ref.decay_to_end(t)[:, None]
        sigma = self.ref.sigma
        xt = b * x1 + sigma * (1 - b.square()).sqrt() * torch.randn(x1.shape, generator=gen)
        g = sigma * self.ref.beta(t)[:, None].sqrt()
        target = g * b * (x1 - b * xt) / (sigma**2 * (1 - b.square()))
        pred = self.model(t.to(self.device), xt.to(self.device))
        return (pred - target.to(self.device)).square().sum(-1).mean()

    def sample(self, model: torch.nn.Module, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and log importance weights (exact for the Euler chain)."""
        with torch.no_grad():
            run = rollout(model, self.ref, n, gen, self.device)
            return run.x, log_weights(self.target, self.ref, run)


@implements("method", "pdns")
def make_pdns(spec: PDNSSampler, target: CountingTarget, model: torch.nn.Module, device: torch.device) -> SamplerState:
    """The PDNS variant for the target's state space."""
    cls = DiscretePDNS if target.discrete else ContinuousPDNS
    return cls(spec, target, model, device)

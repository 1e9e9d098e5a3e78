"""PIS (path integral sampler) baseline: reverse KL through the whole Euler-Maruyama rollout.

Reference: X_0 = 0, dX = sigma dW. Loss: -mean log w = KL(P_theta || P*) - log Z (minus the ELBO),
differentiated through the simulated paths (reparameterised noise). Reverse KL is mode-seeking.
"""

from __future__ import annotations

import torch

from diffpipe.schemas.samplers import PISSampler

from ..registry import implements
from .common import CountingTarget, SamplerState
from .sde import DiracBrownian, constant_clock, log_weights, rollout


@implements("method", "pis")
class PIS(SamplerState):
    """One rollout with gradients per optimizer step."""

    def __init__(self, spec: PISSampler, target: CountingTarget, model: torch.nn.Module, device: torch.device):
        super().__init__(target)
        self.spec, self.model, self.device = spec, model, device
        self.ref = DiracBrownian(target.dim, spec.sde_steps, constant_clock(spec.sigma))

    def step_loss(self, gen: torch.Generator) -> torch.Tensor:
        """Minus the mean log weight of a fresh batch of paths."""
        self.tick(1)
        run = rollout(self.model, self.ref, self.spec.batch_size, gen, self.device)
        return -log_weights(self.target, self.ref, run).mean().float()

    def sample(self, model: torch.nn.Module, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and log importance weights from `model`."""
        with torch.no_grad():
            run = rollout(model, self.ref, n, gen, self.device)
            return run.x, log_weights(self.target, self.ref, run)

"""MDNS (masked diffusion neural sampler): WDCE on a buffer of the sampler's own configurations, weighted
by the self-normalised importance weights softmax(log w), refilled every `resample_every` steps."""

from __future__ import annotations

import torch

from diffpipe.schemas.samplers import MDNSSampler

from ..registry import implements
from .common import CountingTarget, SamplerState
from .masked import masked_rollout, wdce_loss


@implements("method", "mdns")
class MDNS(SamplerState):
    """Masked sampler over lattice sites trained by weighted denoising cross-entropy."""

    def __init__(self, spec: MDNSSampler, target: CountingTarget, model: torch.nn.Module, device: torch.device):
        super().__init__(target)
        self.spec, self.model, self.device = spec, model, device

    def temper(self, log_w: torch.Tensor) -> float:
        """The exponent on log w of the buffer weights: 1 (the plain WDCE target)."""
        return 1.0

    def refill(self, gen: torch.Generator) -> None:
        """Sample a fresh buffer with the current network; store it with its tempered weights."""
        with torch.no_grad():
            x, log_w = self.sample(self.model, self.spec.batch_size, gen)
        gamma = self.temper(log_w)
        self.tensors.update(x=x, weights=torch.softmax(gamma * log_w, 0), gamma=torch.tensor(gamma))

    def step_loss(self, gen: torch.Generator) -> torch.Tensor:
        """WDCE on the buffer with fresh masks."""
        if self.tick(self.spec.resample_every):
            self.refill(gen)
        return wdce_loss(self.model, self.tensors["x"], self.tensors["weights"], self.spec.replicates,
                         self.target.num_states, gen, self.device)

    def sample(self, model: torch.nn.Module, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Configurations and log importance weights log pi~(x) - log q_theta(x)."""
        with torch.no_grad():
            x, log_q = masked_rollout(model, n, self.target.dim, self.target.num_states, gen, self.device)
        return x, self.target.log_prob(x).double() - log_q

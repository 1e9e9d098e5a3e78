"""MDNS (masked diffusion neural sampler): WDCE on a buffer of the sampler's own configurations, weighted
by the self-normalised importance weights softmax(log w), refilled every `resample_every` steps.

Warm start (optional): the first `warm_start_steps` refills weight the buffer for the lattice at
`warm_start_beta` (log pi~ rescaled by warm_start_beta / beta), so that a low-temperature target starts
from a sampler that has seen every mode; the published samples and weights are always at the target's beta.
"""

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

    def target_scale(self, step: int) -> float:
        """Factor on log pi~ = -beta H in the weights of the buffer refilled at `step`: warm_start_beta / beta
        during the warm start, then 1."""
        if self.spec.warm_start_beta is None or step >= self.spec.warm_start_steps:
            return 1.0
        return self.spec.warm_start_beta / self.target.beta

    def refill(self, step: int, gen: torch.Generator) -> None:
        """Sample a fresh buffer with the current network; store it with its tempered weights."""
        with torch.no_grad():
            x, log_q = masked_rollout(self.model, self.spec.batch_size, self.target.dim, self.target.num_states,
                                      gen, self.device)
        log_w = self.target_scale(step) * self.target.log_prob(x).double() - log_q
        gamma = self.temper(log_w)
        self.tensors.update(x=x, weights=torch.softmax(gamma * log_w, 0), gamma=torch.tensor(gamma))

    def step_loss(self, gen: torch.Generator) -> torch.Tensor:
        """WDCE on the buffer with fresh masks."""
        step = int(self.tensors["step"])
        if self.tick(self.spec.resample_every):
            self.refill(step, gen)
        return wdce_loss(self.model, self.tensors["x"], self.tensors["weights"], self.spec.replicates,
                         self.target.num_states, gen, self.device)

    def sample(self, model: torch.nn.Module, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Configurations and log importance weights log pi~(x) - log q_theta(x)."""
        with torch.no_grad():
            x, log_q = masked_rollout(model, n, self.target.dim, self.target.num_states, gen, self.device)
        return x, self.target.log_prob(x).double() - log_q

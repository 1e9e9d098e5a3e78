"""`algorithm: gdpo`: sequence-level PPO on exp(ELBO - ELBO_old) with semi-deterministic quadrature ELBOs."""

from __future__ import annotations

import torch

from diffpipe.schemas.rl_discrete import GDPO
from diffpipe.tasks.mdlm.elbo import draw_elbo_plan
from diffpipe.tasks.mdlm.plans import MaskPlan
from diffpipe.tasks.registry import implements

from .base import SequencePPO
from .core import Rollouts


@implements("algorithm", "gdpo")
class GDPOAlgorithm(SequencePPO):
    """GDPO: raw sequence ratio exp(ELBO - ELBO_old) of quadrature ELBOs, objective / |y|."""

    spec: GDPO

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Semi-deterministic quadrature plan."""
        rows, length = rollouts.completion.shape
        return draw_elbo_plan("quadrature", rows, length, self.spec.num_nodes, generator, rule=self.spec.quadrature,
                              fixed_count=self.spec.fixed_count)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean clipped objective divided by the completion length, plus k2 KL."""
        length = rollouts.completion.shape[1]
        eps = self.spec.epsilon
        per_seq, stats = self.clipped(current - old, signal, eps, eps)
        return self.add_kl(per_seq.mean() / length, current, ref, length, stats), stats

"""`algorithm: espo`: sequence-level PPO on exp((ELBO - ELBO_old) / L) with complementary-mask ELBOs and k2 KL."""

from __future__ import annotations

import torch

from diffpipe.schemas.rl_discrete import ESPO
from diffpipe.tasks.mdlm.elbo import draw_elbo_plan
from diffpipe.tasks.mdlm.plans import MaskPlan
from diffpipe.tasks.registry import implements

from .base import SequencePPO
from .core import Rollouts


@implements("algorithm", "espo")
class ESPOAlgorithm(SequencePPO):
    """ESPO: ratio exp((ELBO - ELBO_old) / L) of antithetic-mask ELBOs, leave-one-out advantages."""

    spec: ESPO
    leave_one_out = True

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Antithetic ELBO plan with 2 num_mc passes."""
        rows, length = rollouts.completion.shape
        return draw_elbo_plan("antithetic", rows, length, 2 * self.spec.num_mc, generator)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean clipped objective of the per-token-normalised ratio plus k2 KL."""
        length = rollouts.completion.shape[1]
        per_seq, stats = self.clipped((current - old) / length, signal, self.spec.epsilon_low, self.spec.epsilon_high)
        return self.add_kl(per_seq.mean(), current, ref, length, stats), stats

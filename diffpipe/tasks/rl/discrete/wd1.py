"""`algorithm: wd1`: ratio-free; raises softmax(A)-weighted and lowers softmax(-A)-weighted mean-field likelihoods."""

from __future__ import annotations

import torch

from diffpipe.schemas.rl_discrete import WD1
from diffpipe.tasks.mdlm.plans import MaskPlan, weighted_token_logps
from diffpipe.tasks.registry import implements

from .base import DiscreteAlgorithm
from .core import Rollouts, mean_field_plan, tokens_through_eos


@implements("algorithm", "wd1")
class WD1Algorithm(DiscreteAlgorithm):
    """wd1: no ratio; softmax(A)-weighted minus softmax(-A)-weighted sequence log-likelihoods per group."""

    spec: WD1

    @property
    def uses_old(self) -> bool:
        """No ratio."""
        return False

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Mean-field plan with prompt masking (as d1)."""
        rows, length = rollouts.completion.shape
        return mean_field_plan(rows, length, rollouts.prompt.shape[1], self.spec.p_mask_prompt, generator)

    def surrogate(self, model: torch.nn.Module, rollouts: Rollouts, plan: MaskPlan) -> torch.Tensor:
        """Sequence log-likelihood: mean-field token log-probs summed through the first EOS (N,)."""
        tokens = weighted_token_logps(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)
        return (tokens * tokens_through_eos(rollouts.completion, self.eos_token_id)).sum(dim=1)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """-sum softmax(A) logpi + sum softmax(-A) logpi per group, averaged over groups."""
        adv = rollouts.grouped(signal)
        weights = torch.softmax(adv, dim=1) - torch.softmax(-adv, dim=1)
        return -(weights * rollouts.grouped(current)).sum(dim=1).mean(), {}

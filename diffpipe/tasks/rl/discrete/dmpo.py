"""`algorithm: dmpo`: weighted denoising cross-entropy toward p_ref exp(r / alpha), weights minus anti-weights."""

from __future__ import annotations

import torch

from diffpipe.schemas.rl_discrete import DMPO
from diffpipe.tasks.mdlm.elbo import draw_elbo_plan
from diffpipe.tasks.mdlm.plans import MaskPlan, plan_estimate
from diffpipe.tasks.registry import implements

from .base import DiscreteAlgorithm
from .core import Rollouts, weighted_cross_entropy


def wdce_plan(batch_size: int, length: int, num_replicates: int, t_min: float,
              generator: torch.Generator | None) -> MaskPlan:
    """DMPO's weighted denoising CE: antithetic pairs, ratio t_min + (1 - t_min) U, weight 1/(|m| R)."""
    if num_replicates % 2:
        raise ValueError(f"num_replicates must be even (antithetic pairs), got {num_replicates}")
    ratios = t_min + (1 - t_min) * torch.rand(num_replicates // 2, batch_size, 1, generator=generator)
    half = torch.rand(num_replicates // 2, batch_size, length, generator=generator) < ratios
    masks = torch.cat([half, ~half])
    counts = masks.sum(-1).float()
    weights = torch.where(counts > 0, 1.0 / (counts.clamp(min=1) * num_replicates), 0.0)
    return MaskPlan(masks, weights)


@implements("algorithm", "dmpo")
class DMPOAlgorithm(DiscreteAlgorithm):
    """DMPO: weighted denoising CE toward p_ref exp(r / alpha), self-normalised weights minus anti-weights."""

    spec: DMPO

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Antithetic WDCE plan."""
        rows, length = rollouts.completion.shape
        return wdce_plan(rows, length, self.spec.num_replicates, self.spec.t_min, generator)

    @property
    def uses_old(self) -> bool:
        """No ratio."""
        return False

    def surrogate(self, model: torch.nn.Module, rollouts: Rollouts, plan: MaskPlan) -> torch.Tensor:
        """Mean log-likelihood of the masked tokens (minus the CE per masked token), per sequence (N,)."""
        return plan_estimate(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)

    def signal(self, model: torch.nn.Module, ref_model: torch.nn.Module, rollouts: Rollouts,
               generator: torch.Generator | None) -> torch.Tensor:
        """a = softmax(c (log_rnd + r/alpha)) - s softmax(c (log_rnd - r/alpha)) per group, from ELBOs."""
        spec = self.spec
        rows, length = rollouts.completion.shape
        plan = draw_elbo_plan("antithetic", rows, length, spec.elbo_forwards, generator)
        plan = plan.to(rollouts.prompt.device)
        log_rnd = (plan_estimate(ref_model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)
                   - plan_estimate(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id))
        tilt = rollouts.grouped(rollouts.rewards.to(log_rnd) / spec.alpha)
        log_rnd = rollouts.grouped(log_rnd)
        positive = torch.softmax(spec.weight_coefficient * (log_rnd + tilt), dim=1)
        negative = torch.softmax(spec.weight_coefficient * (log_rnd - tilt), dim=1)
        return (positive - spec.centering_strength * negative).reshape(-1)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """sum_i a_i CE_i per group, averaged over groups."""
        return weighted_cross_entropy(signal, current, rollouts)

"""`algorithm: coupled_grpo` (DiffuCoder): per-token PPO on the full-mask term plus a complementary mask pair."""

from __future__ import annotations

import torch

from diffpipe.schemas.rl_discrete import CoupledGRPO
from diffpipe.tasks.mdlm.plans import MaskPlan
from diffpipe.tasks.registry import implements

from .base import TokenPPO
from .core import Rollouts


def coupled_plan(batch_size: int, length: int, prompt_length: int, t_min: float, t_max: float,
                 p_mask_prompt: float, generator: torch.Generator | None) -> MaskPlan:
    """DiffuCoder's passes: full mask (weight 1/2), m ~ Bernoulli(t) (1/(2t)), complement (1/(2(1-t))).

    One t ~ U(t_min, t_max) per batch, as the reference draws one per micro-batch.
    """
    t = t_min + (t_max - t_min) * float(torch.rand(1, generator=generator))
    partial = torch.rand(batch_size, length, generator=generator) < t
    masks = torch.stack([torch.ones_like(partial), partial, ~partial])
    weights = torch.tensor([0.5, 0.5 / t, 0.5 / (1 - t)]).view(3, 1).expand(3, batch_size).clone()
    prompt_masks = torch.rand(1, batch_size, prompt_length, generator=generator) < p_mask_prompt
    return MaskPlan(masks, weights, prompt_masks.expand(3, -1, -1))


@implements("algorithm", "coupled_grpo")
class CoupledGRPOAlgorithm(TokenPPO):
    """DiffuCoder: full-mask term averaged with a complementary mask pair (every token scored once)."""

    spec: CoupledGRPO
    leave_one_out = True

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Three-pass coupled plan."""
        rows, length = rollouts.completion.shape
        return coupled_plan(rows, length, rollouts.prompt.shape[1], self.spec.t_min, self.spec.t_max,
                            self.spec.p_mask_prompt, generator)

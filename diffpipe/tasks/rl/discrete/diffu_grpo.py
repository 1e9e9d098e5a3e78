"""`algorithm: diffu_grpo` (d1): per-token PPO on a one-step mean-field surrogate, the completion fully masked."""

from __future__ import annotations

import torch

from diffpipe.schemas.rl_discrete import DiffuGRPO
from diffpipe.tasks.mdlm.plans import MaskPlan
from diffpipe.tasks.registry import implements

from .base import TokenPPO
from .core import Rollouts, mean_field_plan


@implements("algorithm", "diffu_grpo")
class DiffuGRPOAlgorithm(TokenPPO):
    """d1: one forward with the completion fully masked and the prompt randomly masked; R - mean advantages."""

    spec: DiffuGRPO

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Mean-field plan with prompt masking."""
        rows, length = rollouts.completion.shape
        return mean_field_plan(rows, length, rollouts.prompt.shape[1], self.spec.p_mask_prompt, generator)

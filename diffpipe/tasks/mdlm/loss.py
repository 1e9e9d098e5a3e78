"""Pretraining objective of masked diffusion LMs: the 1/t-weighted masked cross-entropy."""

from __future__ import annotations

import torch

from .elbo import bernoulli_time_plan
from .plans import MaskPlan, weighted_token_logps


def pretraining_plan(batch_size: int, length: int, generator: torch.Generator | None,
                     t_min: float = 1e-3) -> MaskPlan:
    """One Bernoulli(p) completion mask per sequence, p = (1 - t_min) t + t_min, t stratified over the batch.

    The weight 1/(p L) makes the plan's estimate the per-token ELBO.
    """
    offset = torch.rand(1, generator=generator)
    times = (offset + torch.arange(batch_size) / batch_size) % 1.0
    probs = (1 - t_min) * times + t_min
    plan = bernoulli_time_plan(probs, torch.ones(batch_size), 1, length, generator)
    masks = plan.masks.transpose(0, 1)
    return MaskPlan(masks, (1.0 / (probs * length)).view(1, -1))


def masked_diffusion_loss(model: torch.nn.Module, prompt: torch.Tensor, completion: torch.Tensor,
                          mask_token_id: int, generator: torch.Generator | None = None,
                          t_min: float = 1e-3) -> torch.Tensor:
    """Mean over the batch of (1/(t L)) sum over masked completion tokens of -log p; prompts never masked."""
    plan = pretraining_plan(prompt.shape[0], completion.shape[1], generator, t_min).to(prompt.device)
    return -weighted_token_logps(model, prompt, completion, plan, mask_token_id).sum(-1).mean()

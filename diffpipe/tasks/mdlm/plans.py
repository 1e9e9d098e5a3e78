"""Mask plans: which completion positions each forward pass masks and with what weight.

A plan is drawn once and then evaluated under several models (current, old, reference): that is how the
RL methods share mask seeds (common random numbers). Every ELBO estimator, the pretraining loss and the
token-level RL surrogates are plans evaluated by the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_ROWS_PER_FORWARD = 4096


@dataclass(frozen=True)
class MaskPlan:
    """K forward passes over a batch of B sequences: completion masks (K, B, L), weights (K, B).

    prompt_masks (K, B, P), when given, also masks prompt positions (d1's prompt masking).
    """

    masks: torch.Tensor
    weights: torch.Tensor
    prompt_masks: torch.Tensor | None = None

    @property
    def num_forwards(self) -> int:
        """Forward passes per sequence."""
        return int(self.masks.shape[0])

    def to(self, device: torch.device | str) -> MaskPlan:
        """The same plan on another device."""
        prompt_masks = None if self.prompt_masks is None else self.prompt_masks.to(device)
        return MaskPlan(self.masks.to(device), self.weights.to(device), prompt_masks)


def random_subset_masks(sizes: torch.Tensor, length: int, generator: torch.Generator | None) -> torch.Tensor:
    """Boolean masks (..., length) with exactly `sizes[...]` positions set, uniformly at random."""
    noise = torch.rand(*sizes.shape, length, generator=generator)
    ranks = noise.argsort(dim=-1).argsort(dim=-1)
    return ranks < sizes.unsqueeze(-1)


def masked_token_logps(model: torch.nn.Module, prompt: torch.Tensor, completion: torch.Tensor,
                       plan: MaskPlan, mask_token_id: int) -> torch.Tensor:
    """log p(y_i | masked input) for every pass and completion position, shape (K, B, L)."""
    num_passes, batch, length = plan.masks.shape
    tokens = torch.cat([prompt, completion], dim=1).unsqueeze(0).expand(num_passes, -1, -1)
    hidden = torch.cat([torch.zeros_like(prompt, dtype=torch.bool).unsqueeze(0).expand(num_passes, -1, -1)
                        if plan.prompt_masks is None else plan.prompt_masks, plan.masks], dim=2)
    inputs = torch.where(hidden, torch.full_like(tokens, mask_token_id), tokens)
    inputs = inputs.reshape(num_passes * batch, -1)
    targets = completion.unsqueeze(0).expand(num_passes, -1, -1).reshape(num_passes * batch, length, 1)
    prompt_len = prompt.shape[1]
    chunks = []
    for start in range(0, inputs.shape[0], MAX_ROWS_PER_FORWARD):
        logits = model(inputs[start:start + MAX_ROWS_PER_FORWARD])[:, prompt_len:]
        logp = F.log_softmax(logits.float(), dim=-1)
        chunks.append(logp.gather(-1, targets[start:start + MAX_ROWS_PER_FORWARD]).squeeze(-1))
    return torch.cat(chunks).reshape(num_passes, batch, length)


def weighted_token_logps(model: torch.nn.Module, prompt: torch.Tensor, completion: torch.Tensor,
                         plan: MaskPlan, mask_token_id: int) -> torch.Tensor:
    """Per-token weighted log-likelihood terms sum_k w_k 1[masked] log p, shape (B, L)."""
    logps = masked_token_logps(model, prompt, completion, plan, mask_token_id)
    return (plan.weights.unsqueeze(-1) * plan.masks * logps).sum(dim=0)


def plan_estimate(model: torch.nn.Module, prompt: torch.Tensor, completion: torch.Tensor, plan: MaskPlan,
                  mask_token_id: int) -> torch.Tensor:
    """The plan's sequence-level estimate (an ELBO estimate for ELBO plans), shape (B,)."""
    return weighted_token_logps(model, prompt, completion, plan, mask_token_id).sum(dim=-1)

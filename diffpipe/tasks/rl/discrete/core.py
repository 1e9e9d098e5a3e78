"""Pieces shared by the discrete RL methods: rollout batches and the block-sampler rollout, advantages, KL
estimators, mask plans."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffpipe.schemas.rl_discrete import DiscreteAlgorithmBase
from diffpipe.tasks.mdlm.plans import MaskPlan
from diffpipe.tasks.mdlm.sampler import sample_completions

RewardFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(prompts (N, P), completions (N, L)) -> (rewards float (N,), correct bool (N,))."""


@dataclass(frozen=True)
class Rollouts:
    """G completions per prompt, flattened prompt-major: row i belongs to group i // G."""

    prompt: torch.Tensor
    completion: torch.Tensor
    rewards: torch.Tensor
    correct: torch.Tensor
    group_size: int

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        """View of a per-row tensor as (groups, G)."""
        return values.view(-1, self.group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, *, leave_one_out: bool,
                     scale: bool) -> torch.Tensor:
    """R - group mean (d1, GDPO) or leave-one-out G/(G-1) (R - mean) (DiffuCoder, ESPO); optional / std."""
    grouped = rewards.view(-1, group_size)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if leave_one_out:
        adv = adv * group_size / (group_size - 1)
    if scale:
        adv = adv / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


def zero_std_ratio(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal (they carry no signal)."""
    grouped = rewards.view(-1, group_size)
    return float((grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean())


def weighted_cross_entropy(signal: torch.Tensor, current: torch.Tensor,
                           rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
    """-sum_i w_i log p_i per group, averaged over groups, with the effective size of the positive weights
    (DMPO's weighted denoising cross-entropy, TR2-D2's buffer objective)."""
    loss = -rollouts.grouped(signal * current).sum(dim=1).mean()
    positive = rollouts.grouped(signal.clamp(min=0))
    ess = positive.sum(dim=1) ** 2 / (positive ** 2).sum(dim=1).clamp(min=1e-12)
    return loss, {"positive_weight_ess": float(ess.mean())}


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator exp(d) - d - 1 with d = ref - current (TRL, d1, DiffuCoder)."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k2 estimator (current - ref)^2 / 2 (ESPO on sequence ELBOs)."""
    return 0.5 * (logp - ref_logp) ** 2


def tokens_through_eos(completion: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Float mask (N, L) of completion positions up to and including the first EOS (d1's loss mask)."""
    is_eos = completion == eos_token_id
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long() == 0
    return before.float()


def mean_field_plan(batch_size: int, length: int, prompt_length: int, p_mask_prompt: float,
                    generator: torch.Generator | None) -> MaskPlan:
    """d1's one-step surrogate: the whole completion masked, each prompt token masked with p_mask_prompt."""
    prompt_masks = torch.rand(1, batch_size, prompt_length, generator=generator) < p_mask_prompt
    masks = torch.ones(1, batch_size, length, dtype=torch.bool)
    return MaskPlan(masks, torch.ones(1, batch_size), prompt_masks)


@torch.no_grad()
def rollout(model: torch.nn.Module, prompts: torch.Tensor, reward_fn: RewardFn, spec: DiscreteAlgorithmBase,
            group_size: int, completion_length: int, generator: torch.Generator | None) -> Rollouts:
    """Sample G completions per prompt with the block low-confidence sampler and score them."""
    repeated = prompts.repeat_interleave(group_size, dim=0)
    completion = sample_completions(model, repeated, completion_length, model.config.mask_token_id,
                                    steps=spec.rollout_steps or completion_length,
                                    block_length=spec.block_length, temperature=spec.temperature,
                                    generator=generator)
    rewards, correct = reward_fn(repeated, completion)
    rewards = rewards.to(device=prompts.device, dtype=torch.float32)
    return Rollouts(repeated, completion, rewards, correct, group_size)

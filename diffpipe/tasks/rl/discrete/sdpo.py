"""`algorithm: sdpo`: SDPO, trajectory alignment split into per-step posterior problems, trained offline.

Each round samples `group_size` completions x0_j of every drawn prompt c (from the frozen reference,
or with `relabel` from the current policy) and scores them once. Each of the round's `num_iterations`
gradient steps draws one noise level t ~ U(0, 1) per prompt, masks ceil(t L) completion tokens of every
x0_j (x_t,j), and computes the implicit rewards

    r~_j = beta_t [log p_theta(x0_j | x_t,j, c) - log p_ref(x0_j | x_t,j, c)],

with the factorised posterior log p(x0 | x_t) = sum over masked positions of log p(x0^i | x_t) and
beta_t = beta / w(t) (`beta_schedule: elbo`, w(t) = 1 / t for the linear masking schedule) or beta
(`constant`). The loss is the cross-entropy between the softmax of the true rewards and the softmax of
the implicit rewards over each prompt's completions, averaged over prompts; with two completions and a
one-hot target it is the DPO loss.
"""

from __future__ import annotations

import torch

from diffpipe.schemas.rl_discrete import SDPO
from diffpipe.tasks.mdlm.plans import MaskPlan, plan_estimate, random_subset_masks
from diffpipe.tasks.registry import implements

from .base import DiscreteAlgorithm
from .core import RewardFn, Rollouts


def sdpo_loss(implicit: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """-sum_i softmax(r)_i log softmax(r~)_i per group (rows of (groups, N)), averaged over groups."""
    target = torch.softmax(rewards.to(implicit), dim=1)
    return -(target * torch.log_softmax(implicit, dim=1)).sum(dim=1).mean()


def noise_levels(groups: int, group_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """One t ~ U(0, 1) per prompt, repeated over its completions (N,)."""
    return torch.rand(groups, generator=generator).repeat_interleave(group_size)


@implements("algorithm", "sdpo")
class SDPOAlgorithm(DiscreteAlgorithm):
    """SDPO: softmax cross-entropy of implicit stepwise rewards against the true rewards."""

    spec: SDPO

    @property
    def uses_old(self) -> bool:
        """No ratio to the rollout policy: the reference is the anchor."""
        return False

    def collect(self, policy: torch.nn.Module, reference: torch.nn.Module, prompts: torch.Tensor,
                reward_fn: RewardFn, group_size: int, completion_length: int,
                generator: torch.Generator | None) -> Rollouts:
        """The round's data: completions of the current policy (relabel) or of the frozen reference."""
        return super().collect(policy if self.spec.relabel else reference, reference, prompts, reward_fn,
                               group_size, completion_length, generator)

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """x_t of every completion: ceil(t L) random positions masked, weight beta_t (one t per prompt)."""
        rows, length = rollouts.completion.shape
        t = noise_levels(rows // rollouts.group_size, rollouts.group_size, generator)
        sizes = torch.ceil(t * length).long().clamp(1, length)
        masks = random_subset_masks(sizes, length, generator)
        beta_t = self.spec.beta * t if self.spec.beta_schedule == "elbo" else torch.full_like(t, self.spec.beta)
        return MaskPlan(masks.unsqueeze(0), beta_t.unsqueeze(0))

    def surrogate(self, model: torch.nn.Module, rollouts: Rollouts, plan: MaskPlan) -> torch.Tensor:
        """beta_t log p(x0 | x_t): the masked tokens' log-likelihood summed, per sequence (N,)."""
        return plan_estimate(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)

    def signal(self, model: torch.nn.Module, ref_model: torch.nn.Module, rollouts: Rollouts,
               generator: torch.Generator | None) -> torch.Tensor:
        """The true rewards (the loss takes their softmax per prompt)."""
        return rollouts.rewards

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of softmax(r~) against softmax(r) per prompt, averaged over prompts."""
        implicit = rollouts.grouped(current - ref)
        loss = sdpo_loss(implicit, rollouts.grouped(signal))
        return loss, {"abs_log_ratio": float(implicit.detach().abs().mean())}

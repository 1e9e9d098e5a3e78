"""What every discrete RL algorithm shares: surrogates under shared mask plans, old/reference at rollout time.

Each algorithm has `prepare` (at rollout time, no gradient: advantages or weights, the mask plans of all
inner iterations, and the old/reference surrogates under those same plans) and `loss` (one inner
iteration, with gradient). Sharing the plans between current, old and reference is the common-random-
numbers rule of every reference implementation. An algorithm takes its options from its own schema
object (diffpipe/schemas/rl_discrete.py); the two families of ratio losses (per token, per sequence)
are here, each algorithm is one module beside this one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from diffpipe.schemas.rl_discrete import DiscreteAlgorithmBase
from diffpipe.tasks.mdlm.plans import MaskPlan, plan_estimate, weighted_token_logps

from .core import RewardFn, Rollouts, group_advantages, kl_k2, kl_k3, rollout, tokens_through_eos


@dataclass
class Prepared:
    """What `prepare` computed at rollout time for the inner iterations."""

    plans: list[MaskPlan]
    signal: torch.Tensor
    """Advantages (ratio methods, wd1) or signed weights (DMPO), per row."""
    old: list[torch.Tensor | None] = field(default_factory=list)
    ref: list[torch.Tensor | None] = field(default_factory=list)


class DiscreteAlgorithm(ABC):
    """Base: surrogates under shared plans, old/ref at rollout time, one loss per inner iteration."""

    leave_one_out = False
    """Advantages R - mean scaled by G / (G - 1) (DiffuCoder, ESPO) instead of R - mean (d1, GDPO)."""

    def __init__(self, spec: DiscreteAlgorithmBase, mask_token_id: int, eos_token_id: int):
        self.spec, self.mask_token_id, self.eos_token_id = spec, mask_token_id, eos_token_id

    def collect(self, policy: torch.nn.Module, reference: torch.nn.Module, prompts: torch.Tensor,
                reward_fn: RewardFn, group_size: int, completion_length: int,
                generator: torch.Generator | None) -> Rollouts:
        """A rollout batch: `group_size` block-sampler completions of each prompt by the policy, scored."""
        return rollout(policy, prompts, reward_fn, self.spec, group_size, completion_length, generator)

    @abstractmethod
    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """The mask plan of one inner iteration."""
        ...

    @abstractmethod
    def surrogate(self, model: torch.nn.Module, rollouts: Rollouts, plan: MaskPlan) -> torch.Tensor:
        """Log-likelihood surrogate under the plan: per token (N, L) or per sequence (N,)."""
        ...

    def signal(self, model: torch.nn.Module, ref_model: torch.nn.Module, rollouts: Rollouts,
               generator: torch.Generator | None) -> torch.Tensor:
        """Advantages (or weights) per row."""
        return group_advantages(rollouts.rewards, rollouts.group_size, leave_one_out=self.leave_one_out,
                                scale=self.spec.scale_rewards)

    @property
    def state(self) -> nn.Module | None:
        """What the algorithm carries from one rollout batch to the next, checkpointed with the run (None)."""
        return None

    @property
    def beta(self) -> float:
        """KL weight (0: no reference forwards)."""
        return float(getattr(self.spec, "beta", 0.0))

    @property
    def uses_old(self) -> bool:
        """Whether the loss has a ratio to the rollout policy computed before the first update."""
        return self.spec.num_iterations > 1

    @torch.no_grad()
    def prepare(self, model: torch.nn.Module, ref_model: torch.nn.Module, rollouts: Rollouts,
                generator: torch.Generator | None) -> Prepared:
        """Plans for every inner iteration with the old and reference surrogates under them."""
        device = rollouts.prompt.device
        plans = [self.draw_plan(rollouts, generator).to(device) for _ in range(self.spec.num_iterations)]
        old = [self.surrogate(model, rollouts, p) if self.uses_old else None for p in plans]
        ref = [self.surrogate(ref_model, rollouts, p) if self.beta > 0 else None for p in plans]
        return Prepared(plans, self.signal(model, ref_model, rollouts, generator), old, ref)

    def loss(self, model: torch.nn.Module, rollouts: Rollouts, prepared: Prepared,
             iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one inner iteration and its statistics."""
        current = self.surrogate(model, rollouts, prepared.plans[iteration])
        old = prepared.old[iteration]
        return self.objective(current, current.detach() if old is None else old, prepared.ref[iteration],
                              prepared.signal, rollouts)

    @abstractmethod
    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss from its surrogates."""
        ...


class TokenPPO(DiscreteAlgorithm):
    """Per-token clipped ratio with k3 KL, averaged over completion tokens through the first EOS (d1)."""

    def surrogate(self, model: torch.nn.Module, rollouts: Rollouts, plan: MaskPlan) -> torch.Tensor:
        """Per-token log-likelihood surrogate (N, L)."""
        return weighted_token_logps(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """-min(rho A, clip(rho) A) + beta k3, token-averaged."""
        eps = self.spec.epsilon
        ratio = torch.exp(current - old)
        adv = signal.unsqueeze(1)
        per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        mask = tokens_through_eos(rollouts.completion, self.eos_token_id)
        stats = {"clip_fraction": float((((ratio - 1).abs() > eps).float() * mask).sum() / mask.sum())}
        if ref is not None:
            kl = kl_k3(current, ref)
            per_token = per_token + self.beta * kl
            stats["kl"] = float((kl.detach() * mask).sum() / mask.sum())
        return (per_token * mask).sum() / mask.sum(), stats


class SequencePPO(DiscreteAlgorithm):
    """Sequence-level clipped ratio of ELBO estimates with k2 KL on the sequence ELBO."""

    def surrogate(self, model: torch.nn.Module, rollouts: Rollouts, plan: MaskPlan) -> torch.Tensor:
        """Sequence ELBO estimate (N,) over all L completion positions."""
        return plan_estimate(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)

    def clipped(self, log_ratio: torch.Tensor, signal: torch.Tensor, low: float,
                high: float) -> tuple[torch.Tensor, dict[str, float]]:
        """-min(rho A, clip(rho, 1 - low, 1 + high) A) per sequence and the clip fraction."""
        ratio = torch.exp(log_ratio)
        per_seq = -torch.minimum(ratio * signal, ratio.clamp(1 - low, 1 + high) * signal)
        clipped = ((ratio < 1 - low) | (ratio > 1 + high)).float().mean()
        return per_seq, {"clip_fraction": float(clipped), "abs_log_ratio": float(log_ratio.detach().abs().mean())}

    def add_kl(self, loss: torch.Tensor, current: torch.Tensor, ref: torch.Tensor | None, length: int,
               stats: dict[str, float]) -> torch.Tensor:
        """loss + beta / L * mean k2(current, ref) (ESPO's normalisation)."""
        if ref is None:
            return loss
        kl = kl_k2(current, ref).mean() / length
        stats["kl"] = float(kl.detach())
        return loss + self.beta * kl

"""Losses of diffu-GRPO, coupled-GRPO, ESPO, GDPO, DMPO and wd1 over one rollout batch.

Each algorithm has `prepare` (at rollout time, no gradient: advantages or weights, the mask plans of all
inner iterations, and the old/reference surrogates under those same plans) and `loss` (one inner
iteration, with gradient). Sharing the plans between current, old and reference is the common-random-
numbers rule of every reference implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from diffpipe.tasks.mdlm.elbo import draw_elbo_plan
from diffpipe.tasks.mdlm.plans import MaskPlan, plan_estimate, weighted_token_logps

from .core import (
    Rollouts,
    coupled_plan,
    group_advantages,
    kl_k2,
    kl_k3,
    mean_field_plan,
    tokens_through_eos,
    wdce_plan,
)
from .options import (
    CommonOptions,
    CoupledGRPOOptions,
    DiffuGRPOOptions,
    DMPOOptions,
    ESPOOptions,
    GDPOOptions,
    WD1Options,
)


@dataclass
class Prepared:
    """What `prepare` computed at rollout time for the inner iterations."""

    plans: list[MaskPlan]
    signal: torch.Tensor
    """Advantages (ratio methods, wd1) or signed weights (DMPO), per row."""
    old: list[torch.Tensor | None] = field(default_factory=list)
    ref: list[torch.Tensor | None] = field(default_factory=list)


class Algorithm(ABC):
    """Base: surrogates under shared plans, old/ref at rollout time, one loss per inner iteration."""

    def __init__(self, options: CommonOptions, mask_token_id: int, eos_token_id: int):
        self.options, self.mask_token_id, self.eos_token_id = options, mask_token_id, eos_token_id

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
        return group_advantages(rollouts.rewards, rollouts.group_size, leave_one_out=False,
                                scale=self.options.scale_rewards)

    @property
    def beta(self) -> float:
        """KL weight (0: no reference forwards)."""
        return float(getattr(self.options, "beta", 0.0))

    @property
    def uses_old(self) -> bool:
        """Whether the loss has a ratio to the rollout policy computed before the first update."""
        return self.options.num_iterations > 1

    @torch.no_grad()
    def prepare(self, model: torch.nn.Module, ref_model: torch.nn.Module, rollouts: Rollouts,
                generator: torch.Generator | None) -> Prepared:
        """Plans for every inner iteration with the old and reference surrogates under them."""
        device = rollouts.prompt.device
        plans = [self.draw_plan(rollouts, generator).to(device) for _ in range(self.options.num_iterations)]
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


class TokenPPO(Algorithm):
    """Per-token clipped ratio with k3 KL, averaged over completion tokens through the first EOS (d1)."""

    def surrogate(self, model: torch.nn.Module, rollouts: Rollouts, plan: MaskPlan) -> torch.Tensor:
        """Per-token log-likelihood surrogate (N, L)."""
        return weighted_token_logps(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """-min(rho A, clip(rho) A) + beta k3, token-averaged."""
        eps = self.options.epsilon
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


class DiffuGRPO(TokenPPO):
    """d1: one forward with the completion fully masked and the prompt randomly masked."""

    options: DiffuGRPOOptions

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Mean-field plan with prompt masking."""
        rows, length = rollouts.completion.shape
        return mean_field_plan(rows, length, rollouts.prompt.shape[1], self.options.p_mask_prompt, generator)


class CoupledGRPO(TokenPPO):
    """DiffuCoder: full-mask term averaged with a complementary mask pair (every token scored once)."""

    options: CoupledGRPOOptions

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Three-pass coupled plan."""
        rows, length = rollouts.completion.shape
        opts = self.options
        return coupled_plan(rows, length, rollouts.prompt.shape[1], opts.t_min, opts.t_max,
                            opts.p_mask_prompt, generator)

    def signal(self, model: torch.nn.Module, ref_model: torch.nn.Module, rollouts: Rollouts,
               generator: torch.Generator | None) -> torch.Tensor:
        """Leave-one-out advantages."""
        return group_advantages(rollouts.rewards, rollouts.group_size, leave_one_out=True,
                                scale=self.options.scale_rewards)


class SequencePPO(Algorithm):
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


class ESPO(SequencePPO):
    """ESPO: ratio exp((ELBO - ELBO_old) / L) of complementary-mask ELBOs, leave-one-out advantages."""

    options: ESPOOptions

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Antithetic ELBO plan with 2 num_mc passes."""
        rows, length = rollouts.completion.shape
        return draw_elbo_plan("antithetic", rows, length, 2 * self.options.num_mc, generator)

    def signal(self, model: torch.nn.Module, ref_model: torch.nn.Module, rollouts: Rollouts,
               generator: torch.Generator | None) -> torch.Tensor:
        """Leave-one-out advantages."""
        return group_advantages(rollouts.rewards, rollouts.group_size, leave_one_out=True,
                                scale=self.options.scale_rewards)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean clipped objective of the per-token-normalised ratio plus k2 KL."""
        length = rollouts.completion.shape[1]
        per_seq, stats = self.clipped((current - old) / length, signal, self.options.epsilon_low,
                                      self.options.epsilon_high)
        return self.add_kl(per_seq.mean(), current, ref, length, stats), stats


class GDPO(SequencePPO):
    """GDPO: raw sequence ratio exp(ELBO - ELBO_old) of quadrature ELBOs, objective / |y|."""

    options: GDPOOptions

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Semi-deterministic quadrature plan."""
        rows, length = rollouts.completion.shape
        opts = self.options
        return draw_elbo_plan("quadrature", rows, length, opts.num_nodes, generator, rule=opts.quadrature,
                              fixed_count=opts.fixed_count)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean clipped objective divided by the completion length, plus k2 KL."""
        length = rollouts.completion.shape[1]
        eps = self.options.epsilon
        per_seq, stats = self.clipped(current - old, signal, eps, eps)
        return self.add_kl(per_seq.mean() / length, current, ref, length, stats), stats


class DMPO(Algorithm):
    """DMPO: weighted denoising CE toward p_ref exp(r / alpha), self-normalised weights minus anti-weights."""

    options: DMPOOptions

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Antithetic WDCE plan."""
        rows, length = rollouts.completion.shape
        return wdce_plan(rows, length, self.options.num_replicates, self.options.t_min, generator)

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
        opts = self.options
        rows, length = rollouts.completion.shape
        plan = draw_elbo_plan("antithetic", rows, length, opts.elbo_forwards, generator)
        plan = plan.to(rollouts.prompt.device)
        log_rnd = (plan_estimate(ref_model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)
                   - plan_estimate(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id))
        tilt = rollouts.grouped(rollouts.rewards.to(log_rnd) / opts.alpha)
        log_rnd = rollouts.grouped(log_rnd)
        positive = torch.softmax(opts.weight_coefficient * (log_rnd + tilt), dim=1)
        negative = torch.softmax(opts.weight_coefficient * (log_rnd - tilt), dim=1)
        return (positive - opts.centering_strength * negative).reshape(-1)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """sum_i a_i CE_i per group, averaged over groups."""
        loss = -rollouts.grouped(signal * current).sum(dim=1).mean()
        positive = rollouts.grouped(signal.clamp(min=0))
        ess = positive.sum(dim=1) ** 2 / (positive ** 2).sum(dim=1).clamp(min=1e-12)
        return loss, {"positive_weight_ess": float(ess.mean())}


class WD1(Algorithm):
    """wd1: ratio-free; raise softmax(A)-weighted, lower softmax(-A)-weighted mean-field likelihoods."""

    options: WD1Options

    @property
    def uses_old(self) -> bool:
        """No ratio."""
        return False

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """Mean-field plan with prompt masking (as d1)."""
        rows, length = rollouts.completion.shape
        return mean_field_plan(rows, length, rollouts.prompt.shape[1], self.options.p_mask_prompt, generator)

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


ALGORITHMS: dict[str, type[Algorithm]] = {
    "diffu_grpo": DiffuGRPO, "coupled_grpo": CoupledGRPO, "espo": ESPO, "gdpo": GDPO, "dmpo": DMPO,
    "wd1": WD1,
}
"""Algorithm class of each name."""

"""Masked-diffusion language models: loss, sampler, ELBO estimators, exact ELBO (pure torch)."""

from .elbo import (
    ESTIMATORS,
    QUADRATURE_RULES,
    draw_elbo_plan,
    elbo_integrand_from_sums,
    estimate_elbo,
    exact_elbo,
    exact_elbo_from_sums,
    mask_size_sums,
    quadrature_rule,
)
from .loss import masked_diffusion_loss, pretraining_plan
from .plans import MaskPlan, masked_token_logps, plan_estimate, weighted_token_logps
from .sampler import block_schedule, sample_completions

__all__ = [
    "ESTIMATORS", "QUADRATURE_RULES", "MaskPlan", "block_schedule", "draw_elbo_plan",
    "elbo_integrand_from_sums",
    "estimate_elbo", "exact_elbo", "exact_elbo_from_sums", "mask_size_sums", "masked_diffusion_loss",
    "masked_token_logps", "plan_estimate", "pretraining_plan", "quadrature_rule", "sample_completions",
    "weighted_token_logps",
]

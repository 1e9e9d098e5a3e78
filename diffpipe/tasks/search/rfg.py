"""Reward-free guidance (RFG): follow the log-likelihood ratio of an RL'd policy and its reference.

Per step the guided token distribution is log p* = (1 + w) log p_policy - w log p_reference (each
log-softmaxed over clean tokens; the mask token keeps probability 0), i.e. the process reward
beta log(p_policy / p_reference) added to the policy. Decoding is the plain sample stage's greedy
block sampler on the guided logits; two forward passes (policy, reference) per step.
"""

from __future__ import annotations

import torch

from diffpipe.schemas.search import RewardFreeGuidance

from ..registry import search
from .masked import Logits, MaskedProblem
from .particles import SearchResult


def guided_logits(policy: Logits, reference: Logits, weight: float) -> Logits:
    """Token ids -> (1 + w) log_softmax(policy) - w log_softmax(reference)."""

    def logits_of(ids: torch.Tensor) -> torch.Tensor:
        lp, lr = policy(ids).float().log_softmax(-1), reference(ids).float().log_softmax(-1)
        return torch.where(torch.isfinite(lp), (1 + weight) * lp - weight * lr.clamp(min=-1e4), lp)

    return logits_of


@search("rfg")
def rfg(spec: RewardFreeGuidance, problem: MaskedProblem) -> SearchResult:
    """Greedy completions under the RFG-guided logits of the policy (`model`) and the reference."""
    completion = problem.complete(guided_logits(problem.model, problem.reference, spec.weight), problem.prompts, 0.0)
    return SearchResult(completion, None, problem.evaluations)

"""Classifier-free guidance of a prompt-conditioned masked model, with a constant or a smooth schedule.

The unconditional branch sees the prompt replaced by mask tokens (a model pretrained with prompt
dropout, `cond_dropout` > 0, has learnt it). Guided logits l_u + (1 + w_t)(l_c - l_u) are normalised
over clean tokens only (the mask logit stays -inf) and the block sampler commits its scheduled number
of tokens per step, so guidance changes which tokens are committed, never how many: the unmasking
schedule of the base sampler is kept. The strength follows the share of completion tokens already
committed, progress in [0, 1]: `constant` w_t = w, `smooth` w_t = w sin^2(pi/2 progress), weak while
the completion is heavily masked and full at the end. Greedy decoding; one batched pass of 2N rows per step.
"""

from __future__ import annotations

import math

import torch

from diffpipe.schemas.search import DiscreteCFG

from ..registry import search
from .masked import Logits, MaskedProblem
from .particles import SearchResult


def guidance_weight(spec: DiscreteCFG, progress: torch.Tensor) -> torch.Tensor:
    """w_t per sequence for the share of its completion already committed."""
    if spec.schedule == "constant":
        return torch.full_like(progress, spec.weight)
    return spec.weight * torch.sin(math.pi / 2 * progress) ** 2


def cfg_logits(model: Logits, spec: DiscreteCFG, prompt_length: int, mask_token_id: int) -> Logits:
    """Token ids -> guided logits, the unconditional pass with the prompt masked, in one batched call."""

    def logits_of(ids: torch.Tensor) -> torch.Tensor:
        unconditional = ids.clone()
        unconditional[:, :prompt_length] = mask_token_id
        both = model(torch.cat([ids, unconditional])).float().log_softmax(-1)
        cond, uncond = both.chunk(2)
        progress = (ids[:, prompt_length:] != mask_token_id).float().mean(1)
        w = guidance_weight(spec, progress)[:, None, None]
        return torch.where(torch.isfinite(cond), uncond.clamp(min=-1e4) + (1 + w) * (cond - uncond.clamp(min=-1e4)),
                           cond)

    return logits_of


@search("discrete_cfg")
def discrete_cfg(spec: DiscreteCFG, problem: MaskedProblem) -> SearchResult:
    """Greedy completions under classifier-free guidance with the stage's schedule."""
    logits_of = cfg_logits(problem.model, spec, problem.prompts.shape[1], problem.mask_token_id)
    return SearchResult(problem.complete(logits_of, problem.prompts, 0.0), None, problem.evaluations)

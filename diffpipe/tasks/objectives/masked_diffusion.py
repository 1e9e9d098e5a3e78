"""Masked (absorbing-state) diffusion on tokens: the 1/t-weighted cross-entropy on masked completion tokens."""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.errors import SpecError
from diffpipe.schemas.reasoning import MaskedDiffusion
from diffpipe.tasks.distributed import local_slice
from diffpipe.tasks.mdlm.loss import pretraining_plan
from diffpipe.tasks.mdlm.plans import MaskPlan, weighted_token_logps
from diffpipe.tasks.registry import implements


@implements("objective", "masked_diffusion")
class MaskedDiffusionLoss:
    """Per sequence, (1/(t L)) sum over masked completion tokens of -log p.

    Here `net` is the token model itself (ids -> logits), `x0` the completions and `cond` the prompts.
    """

    def __init__(self, spec: MaskedDiffusion):
        self.spec = spec

    def __call__(self, net: Any, x0: torch.Tensor, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Per-sequence loss at a fresh stratified draw of mask ratios."""
        mask_token_id = getattr(getattr(net, "config", None), "mask_token_id", None)
        if mask_token_id is None or cond is None:
            raise SpecError("objective.kind", "masked_diffusion trains token models on prompt/completion data",
                            "model.arch mdlm with countdown or sudoku data", type(net).__name__)
        plan = pretraining_plan(x0.shape[0], x0.shape[1], gen, self.spec.t_min).to(x0.device)
        rows = local_slice(x0.shape[0])  # the plan is drawn for the whole batch, this rank scores its rows
        plan = MaskPlan(plan.masks[:, rows], plan.weights[:, rows])
        return -weighted_token_logps(net, cond[rows], x0[rows], plan, mask_token_id).sum(-1)

"""`method: meanflow_distill`: MeanFlow distillation (sony/mf-rae's MFD) from a frozen velocity teacher."""

from __future__ import annotations

import torch

from diffpipe.schemas.distill import MeanFlowTeacherDistill
from diffpipe.tasks.registry import implements

from . import VelocityFn
from .meanflow import MeanFlowLoss


@implements("method", "meanflow_distill")
class MeanFlowDistillLoss(MeanFlowLoss):
    """The MeanFlow loss with the frozen teacher's velocity in place of eps - x0 everywhere."""

    needs_teacher = True

    def __init__(self, spec: MeanFlowTeacherDistill, teacher: VelocityFn):
        super().__init__(spec)
        self.teacher = teacher

    def velocity(self, x0: torch.Tensor, eps: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                 cond: torch.Tensor | None) -> torch.Tensor:
        """The teacher's velocity at (x_t, t), without gradient."""
        with torch.no_grad():
            return self.teacher(xt, t, cond).to(xt.dtype)

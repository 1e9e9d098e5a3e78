"""The deterministic regression baseline: the same backbone predicts x0 from the condition, no noise."""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.schemas import Regression
from diffpipe.tasks.distributed import local_rows
from diffpipe.tasks.registry import implements

from . import NetFn, per_sample_mean


@implements("objective", "regression")
class RegressionLoss:
    """Deterministic regression |net(0, 0, cond) - x0|^2."""

    def __init__(self, spec: Regression):
        self.spec = spec

    def __call__(self, net: NetFn, x0: torch.Tensor, cond: Any, gen: torch.Generator) -> torch.Tensor:
        """Per-sample squared error of the one-call prediction."""
        x0, cond = local_rows(x0, cond)
        zeros_t = torch.zeros(x0.shape[0], device=x0.device)
        return per_sample_mean((net(torch.zeros_like(x0), zeros_t, cond).float() - x0) ** 2)

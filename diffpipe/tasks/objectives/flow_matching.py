"""Flow matching (rectified flow): x_t = (1 - t) x0 + t eps and the net regresses the velocity eps - x0."""

from __future__ import annotations

import torch

from diffpipe.schemas import FlowMatching
from diffpipe.tasks import timeconv
from diffpipe.tasks.distributed import local_rows
from diffpipe.tasks.registry import implements

from . import NetFn, bcast, per_sample_mean


@implements("objective", "flow_matching")
class FlowMatchingLoss:
    """Rectified-flow velocity regression: |v(x_t, t) - (eps - x0)|^2."""

    def __init__(self, spec: FlowMatching):
        self.spec = spec

    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Training times from the configured density."""
        if self.spec.time_sampling == "uniform":
            return torch.rand(n, generator=gen)
        return torch.sigmoid(self.spec.logit_mean + self.spec.logit_std * torch.randn(n, generator=gen))

    def __call__(self, net: NetFn, x0: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        """Per-sample squared velocity error at a fresh (t, eps) draw."""
        t = self.sample_t(x0.shape[0], gen).to(x0.device)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        x0, t, eps, labels = local_rows(x0, t, eps, labels)
        xt = (1 - bcast(t, x0)) * x0 + bcast(t, x0) * eps
        pred = net(xt, timeconv.diffusers_timestep_from_t(t), labels)
        return per_sample_mean((pred.float() - (eps - x0)) ** 2)

"""DiffusionNFT: negative-aware fine-tuning on the forward process, with no likelihoods and any sampler.

Defaults of NVlabs/DiffusionNFT 24af555 config/nft.py: rollouts from the old
policy with a deterministic 10-step solver, guidance strength b = 1, advantages clipped to +-5 and
mapped to r in [0, 1], adaptive x0 weighting, KL (velocity MSE to the reference) 1e-4, old policy
decay min(0.001 step, 0.5).
"""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.schemas.rl import DiffusionNFT
from diffpipe.tasks.registry import implements

from ...conditions import select_conditions
from .base import ContinuousAlgorithm, LossParts, Nets
from .common import Rollout, expand_like, noised, per_sample_mean, velocity


def optimality_weights(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """r = clip(A, -m, m) / m / 2 + 1/2 in [0, 1]: the share of the positive policy's loss."""
    return advantages.clamp(-adv_clip_max, adv_clip_max) / adv_clip_max / 2 + 0.5


def x0_error(x0_pred: torch.Tensor, x0: torch.Tensor, adaptive: bool) -> torch.Tensor:
    """Per-sample mean squared x0 error, divided by its detached mean absolute error when adaptive."""
    err = per_sample_mean((x0_pred - x0) ** 2)
    if adaptive:
        err = err / per_sample_mean((x0_pred - x0).abs()).detach().clamp(min=1e-5)
    return err


@implements("algorithm", "diffusion_nft")
class DiffusionNFTAlgorithm(ContinuousAlgorithm):
    """DiffusionNFT losses on clean rollout samples."""

    log_columns = ("kl",)
    anchors = ("old",)
    samples_with = "old"
    spec: DiffusionNFT

    @property
    def uses_reference(self) -> bool:
        """The KL term needs the reference model."""
        return self.spec.kl_beta > 0

    def training_times(self, grid: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, k) times from the sampler grid: its first fraction, all or `train_timesteps` drawn per sample."""
        candidates = grid[: max(1, int((len(grid) - 1) * self.spec.timestep_fraction))]
        k = self.spec.train_timesteps
        if k is None or k >= len(candidates):
            return candidates.expand(n, -1)
        pick = torch.rand(n, len(candidates), generator=gen).argsort(1)[:, :k]
        return candidates[pick]

    def losses(self, nets: Nets, batch: Rollout, advantages: torch.Tensor, gen: torch.Generator,
               data: tuple[torch.Tensor, Any] | None = None) -> LossParts:
        """Per advantage row: adv_clip_max * mean(r L+ + (1 - r) L-) / b; regulariser kl_beta * |v - v_ref|^2."""
        n = batch.x0.shape[0]
        times = self.training_times(batch.grid, n, gen)
        k = times.shape[1]
        x0 = batch.x0.repeat_interleave(k, 0)
        t = times.reshape(-1).to(x0.device)
        cond = select_conditions(batch.cond, torch.arange(n).repeat_interleave(k))
        xt, _ = noised(x0, t, gen)
        v = velocity(nets.to_data(nets.policy), xt, t, cond)
        with torch.no_grad():
            v_old = velocity(nets.to_data(nets.anchors["old"]), xt, t, cond)
        b, te = self.spec.guidance_strength, expand_like(t, xt)
        positive = x0_error(xt - te * (b * v + (1 - b) * v_old), x0, self.spec.adaptive_weighting)
        negative = x0_error(xt - te * ((1 + b) * v_old - b * v), x0, self.spec.adaptive_weighting)
        r = optimality_weights(advantages, self.spec.adv_clip_max).repeat_interleave(k, 1)
        loss = self.spec.adv_clip_max * (r * positive + (1 - r) * negative).mean(1) / b
        regulariser = torch.zeros((), device=x0.device)
        stats = {"positive_loss": float(positive.detach().mean()), "negative_loss": float(negative.detach().mean())}
        if self.uses_reference:
            with torch.no_grad():
                v_ref = velocity(nets.to_data(nets.reference), xt, t, cond)
            kl = per_sample_mean((v - v_ref) ** 2).mean()
            regulariser = self.spec.kl_beta * kl
            stats["kl"] = float(kl.detach())
        return LossParts(loss, regulariser, stats)

    def anchor_decays(self, step: int) -> dict[str, float]:
        """old <- d old + (1 - d) theta with d = min(old_decay_step * step, old_decay_max)."""
        return {"old": min(self.spec.old_decay_step * step, self.spec.old_decay_max)}

"""Advantage Weighted Matching: the pretraining flow-matching loss on rollout samples, weighted by advantage.

Defaults of scxue/advantage_weighted_matching be51372 config/dgx_awm.py: 14
rollout steps with noise level 0.4, 6 stratified training times per sample with time shift 3,
advantages clipped to +-5 then rescaled to max |A| = 1, velocity MSE to the reference (1e-3) and to a
fast EMA copy of the policy (weight 1, decay 0.3). On-policy, the PPO ratio is 1 and its clip inactive,
so the loss is -A * ell with ell the negative flow-matching error.
"""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.schemas.rl import AWM
from diffpipe.tasks.registry import implements

from ...conditions import select_conditions
from .base import ContinuousAlgorithm, LossParts, Nets
from .common import Rollout, noised, per_sample_mean, stratified_times, velocity

TIME_WEIGHTS = {"none": lambda t: torch.ones_like(t), "t": lambda t: t, "t2": lambda t: t**2}


@implements("algorithm", "awm")
class AWMAlgorithm(ContinuousAlgorithm):
    """AWM losses on clean rollout samples."""

    log_columns = ("kl", "ema_mse")
    anchors = ("ema",)
    spec: AWM

    @property
    def uses_reference(self) -> bool:
        """The KL term needs the reference model."""
        return self.spec.kl_beta > 0

    def advantages(self, rewards: torch.Tensor, group_size: int, global_std: bool) -> torch.Tensor:
        """Group-normalised advantages, clipped, then rescaled so the largest |A| of each row is 1."""
        adv = super().advantages(rewards, group_size, global_std)
        return adv / adv.abs().amax(1, keepdim=True).clamp(min=1e-8)

    def losses(self, nets: Nets, batch: Rollout, advantages: torch.Tensor, gen: torch.Generator,
               data: tuple[torch.Tensor, Any] | None = None) -> LossParts:
        """Per advantage row: mean(A * w(t) |v - (eps - x0)|^2); regulariser: velocity MSE to ref and EMA."""
        n, k = batch.x0.shape[0], self.spec.timesteps_per_sample
        t = stratified_times(n, k, gen, self.spec.time_shift).reshape(-1).to(batch.x0.device)
        x0 = batch.x0.repeat_interleave(k, 0)
        cond = select_conditions(batch.cond, torch.arange(n).repeat_interleave(k))
        xt, eps = noised(x0, t, gen)
        v = velocity(nets.to_data(nets.policy), xt, t, cond)
        fm_error = TIME_WEIGHTS[self.spec.weighting](t) * per_sample_mean((v - (eps - x0)) ** 2)
        loss = (advantages.repeat_interleave(k, 1) * fm_error).mean(1)
        with torch.no_grad():
            v_ema = velocity(nets.to_data(nets.anchors["ema"]), xt, t, cond)
        ema_mse = per_sample_mean((v - v_ema) ** 2).mean()
        regulariser = self.spec.ema_kl_beta * ema_mse
        stats = {"fm_error": float(fm_error.detach().mean()), "ema_mse": float(ema_mse.detach())}
        if self.uses_reference:
            with torch.no_grad():
                v_ref = velocity(nets.to_data(nets.reference), xt, t, cond)
            kl = per_sample_mean((v - v_ref) ** 2).mean()
            regulariser = regulariser + self.spec.kl_beta * kl
            stats["kl"] = float(kl.detach())
        return LossParts(loss, regulariser, stats)

    def anchor_decays(self, step: int) -> dict[str, float]:
        """ema <- decay * ema + (1 - decay) * theta, every step."""
        return {"ema": self.spec.ema_kl_decay}

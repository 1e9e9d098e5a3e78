"""DDRL: maximise lambda((r - Z) / beta) on rollouts while the diffusion loss on real data anchors the model.

arXiv 2512.04332 (no public code): J = E_p[-exp(-(r - Z) / beta)] - KL(p_data || p),
Z = beta log E[exp(r / beta)] per group. The reward term's estimator is ours: the flow-matching loss
on rollout samples weighted by the group-centred lambda (a likelihood surrogate, as AWM), plus
data_weight times the pretraining flow-matching loss on a batch of real data (the forward KL bound).
"""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.schemas.rl import DDRL
from diffpipe.tasks.registry import implements

from ...conditions import select_conditions
from .base import ContinuousAlgorithm, LossParts, Nets
from .common import Rollout, noised, per_sample_mean, stratified_times, velocity

MAX_EXPONENT = 30.0
"""Cap on (Z - r) / beta so exp stays finite for rewards far below the group's soft maximum."""


def ddrl_utilities(rewards: torch.Tensor, group_size: int, beta: float) -> torch.Tensor:
    """lambda((r - Z) / beta) = -exp(-(r - Z) / beta) with Z = beta log mean_group exp(r / beta); (K, N)."""
    scaled = rewards.reshape(rewards.shape[0], -1, group_size) / beta
    log_mean_exp = torch.logsumexp(scaled, -1, keepdim=True) - torch.log(torch.tensor(float(group_size)))
    return -torch.exp((log_mean_exp - scaled).clamp(max=MAX_EXPONENT)).reshape(rewards.shape)


@implements("algorithm", "ddrl")
class DDRLAlgorithm(ContinuousAlgorithm):
    """DDRL losses: reward term on rollouts, data term on real samples."""

    log_columns = ("data_loss",)
    needs_data = True
    spec: DDRL

    def advantages(self, rewards: torch.Tensor, group_size: int, global_std: bool) -> torch.Tensor:
        """Group-centred DDRL utilities, divided by their std (batch or group)."""
        utility = ddrl_utilities(rewards, group_size, self.spec.reward_temperature)
        grouped = utility.reshape(utility.shape[0], -1, group_size)
        centred = (grouped - grouped.mean(-1, keepdim=True)).reshape(utility.shape)
        std = utility.std(-1, keepdim=True) if global_std else grouped.std(-1).repeat_interleave(group_size, -1)
        return centred / (std + 1e-4)

    def losses(self, nets: Nets, batch: Rollout, advantages: torch.Tensor, gen: torch.Generator,
               data: tuple[torch.Tensor, Any] | None = None) -> LossParts:
        """Per advantage row: mean(A * |v - (eps - x0)|^2) on rollouts; regulariser: data_weight * FM loss on data."""
        n, k = batch.x0.shape[0], self.spec.timesteps_per_sample
        t = stratified_times(n, k, gen).reshape(-1).to(batch.x0.device)
        x0 = batch.x0.repeat_interleave(k, 0)
        cond = select_conditions(batch.cond, torch.arange(n).repeat_interleave(k))
        xt, eps = noised(x0, t, gen)
        policy = nets.to_data(nets.policy)
        fm_error = per_sample_mean((velocity(policy, xt, t, cond) - (eps - x0)) ** 2)
        loss = (advantages.repeat_interleave(k, 1) * fm_error).mean(1)
        x_data, cond_data = data
        data_loss = self.pretraining_loss(policy, x_data, cond_data, gen).mean()
        return LossParts(loss, self.spec.data_weight * data_loss,
                         {"data_loss": float(data_loss.detach()), "fm_error": float(fm_error.detach().mean())})

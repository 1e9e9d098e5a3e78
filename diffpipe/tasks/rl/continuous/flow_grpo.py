"""Flow-GRPO: PPO-clipped policy gradient over the Gaussian steps of an SDE sampler, KL to the reference.

Defaults of yifan123/flow_grpo ac4c86e: 10 SDE steps with noise level 0.7, clip
1e-4, advantages clipped to +-5, KL beta 0.04 as ||mean_theta - mean_ref||^2 / (2 s_t^2), timestep
fraction 0.99, two optimizer steps per rollout batch.
"""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.schemas.rl import FlowGRPO
from diffpipe.tasks.registry import implements

from ...conditions import select_conditions
from .base import ContinuousAlgorithm, LossParts, Nets
from .common import Rollout, gaussian_log_prob, per_sample_mean, sde_step, step_end, velocity


def ppo_clip_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-advantage-row PPO loss mean(max(-A rho, -A clip(rho))) and the clipped share; A (K, n), logp (J, n)."""
    ratio = torch.exp(log_probs - old_log_probs)
    adv = advantages[:, None, :]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).flatten(1).mean(1)
    return loss, ((ratio - 1.0).abs() > clip_range).float().mean()


@implements("algorithm", "flow_grpo")
class FlowGRPOAlgorithm(ContinuousAlgorithm):
    """Flow-GRPO losses on stored SDE trajectories."""

    log_columns = ("clip_fraction", "kl")
    keeps_states = True
    spec: FlowGRPO

    @property
    def uses_reference(self) -> bool:
        """The KL term needs the reference model."""
        return self.spec.kl_beta > 0

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps per rollout batch (reference: 2)."""
        return self.spec.updates_per_rollout

    def train_steps(self, num_steps: int) -> int:
        """Steps of the trajectory trained on (the first int(T * fraction), at least one)."""
        return max(1, int(num_steps * self.spec.timestep_fraction))

    def losses(self, nets: Nets, batch: Rollout, advantages: torch.Tensor, gen: torch.Generator,
               data: tuple[torch.Tensor, Any] | None = None) -> LossParts:
        """PPO loss per advantage row over all trained steps of every trajectory, plus beta * KL."""
        states, grid = batch.states, batch.grid
        n, num_steps = states.shape[1], states.shape[0] - 1
        j = self.train_steps(num_steps)
        x, x_next = states[:j].flatten(0, 1), states[1:j + 1].flatten(0, 1)
        t, t_next = grid[:j].repeat_interleave(n).to(x.device), grid[1:j + 1].repeat_interleave(n).to(x.device)
        cond = select_conditions(batch.cond, torch.arange(n).repeat(j))
        r = step_end(t_next, nets.two_time)
        step = sde_step(x, velocity(nets.policy, x, t, cond, r), t, t_next, float(grid[1]), self.spec.noise_level)
        log_probs = gaussian_log_prob(x_next, step.mean, step.std).view(j, n)
        loss, clip_fraction = ppo_clip_loss(log_probs, batch.log_probs[:j], advantages, self.spec.clip_range)
        regulariser = torch.zeros((), device=x.device)
        stats = {"clip_fraction": float(clip_fraction)}
        if self.uses_reference:
            with torch.no_grad():
                ref = sde_step(x, velocity(nets.reference, x, t, cond, r), t, t_next, float(grid[1]),
                               self.spec.noise_level)
            kl = per_sample_mean((step.mean - ref.mean) ** 2) / (2 * step.noise_scale**2)
            regulariser = self.spec.kl_beta * kl.mean()
            stats["kl"] = float(kl.detach().mean())
        return LossParts(loss, regulariser, stats)

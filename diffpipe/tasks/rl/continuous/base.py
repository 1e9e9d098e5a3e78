"""What the rl stage asks of a continuous algorithm: rollouts, advantages, losses, frozen copies to update."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diffpipe.schemas import FlowMatching
from diffpipe.tasks.distributed import full_tensors
from diffpipe.tasks.objectives import NetFn
from diffpipe.tasks.objectives.flow_matching import FlowMatchingLoss

from .common import Rollout, group_advantages


@dataclass
class Nets:
    """Network functions a loss may call: the policy (with grad) and frozen copies (call under no_grad)."""

    policy: NetFn
    reference: NetFn | None = None
    """The init checkpoint (KL anchor)."""
    anchors: dict[str, NetFn] = field(default_factory=dict)
    """The algorithm's own slowly updated copies (DiffusionNFT `old`, AWM `ema`)."""
    two_time: bool = False
    """The networks are flow maps u(x, r, t) (a MeanFlow / CMT student): steps use their jump velocity."""

    def to_data(self, net: NetFn) -> NetFn:
        """`net` as the forward-process losses call it (velocity at noisy data x_t, fitted against eps - x0).

        A two-time net gives its mean velocity over the whole jump to data (r = 0): eps - x0 is exactly
        that quantity on the straight path, and x_t - t u is the net's own one-call x0 prediction. A
        one-time net is returned as it is.
        """
        if not self.two_time:
            return net
        return lambda x, timestep, cond: net(x, timestep, cond, torch.zeros_like(timestep))


@dataclass
class LossParts:
    """One loss per reward advantage row (combined by weighted sum or MARBLE) plus a shared regulariser."""

    reward_losses: torch.Tensor
    """(K,) losses, one per advantage row."""
    regulariser: torch.Tensor
    """Scalar added once (KL to the reference, data term, ...)."""
    stats: dict[str, float] = field(default_factory=dict)


class ContinuousAlgorithm(ABC):
    """Defaults shared by the algorithms; each subclass sets its flags and writes `losses`."""

    keeps_states = False
    """Rollouts keep every state and step log-probability (trajectory methods)."""
    anchors: tuple[str, ...] = ()
    """Names of frozen policy copies this algorithm updates itself."""
    samples_with = "policy"
    """Which network generates rollouts: `policy` or one of `anchors`."""
    needs_data = False
    """The loss also takes a batch of real data."""
    uses_reference = False
    """The loss calls the reference model."""
    log_columns: tuple[str, ...] = ()
    """The algorithm's own columns of the per-step reward log."""

    def __init__(self, spec: Any, objective: FlowMatching):
        self.spec = spec
        self.pretraining_loss = FlowMatchingLoss(objective)
        """The init checkpoint's own flow-matching loss (per sample; for a flow-map init, the default one)."""

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps taken on each rollout batch."""
        return 1

    @property
    def sampler_steps(self) -> int:
        """Steps of the rollout sampler."""
        return self.spec.sampler_steps

    @property
    def noise_level(self) -> float:
        """SDE noise of the rollout sampler (0: ODE)."""
        return self.spec.noise_level

    def advantages(self, rewards: torch.Tensor, group_size: int, global_std: bool) -> torch.Tensor:
        """(K, N) advantages from (K, N) rewards: group-normalised, clipped to +-adv_clip_max."""
        adv = group_advantages(rewards, group_size, global_std)
        return adv.clamp(-self.spec.adv_clip_max, self.spec.adv_clip_max)

    @abstractmethod
    def losses(self, nets: Nets, batch: Rollout, advantages: torch.Tensor, gen: torch.Generator,
               data: tuple[torch.Tensor, Any] | None = None) -> LossParts:
        """Per-reward losses on a rollout slice with (K, n) advantages."""

    def anchor_decays(self, step: int) -> dict[str, float]:
        """Decay of each frozen copy after optimizer step `step` (0-based); none by default."""
        return {}

    def update_anchors(self, anchors: dict[str, nn.Module], policy: nn.Module, step: int) -> None:
        """copy <- decay * copy + (1 - decay) * policy for every frozen copy, after optimizer step `step`."""
        for name, decay in self.anchor_decays(step).items():
            lerp_parameters(anchors[name], policy, decay)


@torch.no_grad()
def lerp_parameters(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameter by parameter (whole tensors of a sharded source)."""
    for t, s in zip(target.parameters(), full_tensors(list(source.parameters())), strict=True):
        t.lerp_(s.detach(), 1.0 - decay)

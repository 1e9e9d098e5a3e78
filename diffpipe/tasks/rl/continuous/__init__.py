"""RL for continuous (flow-matching) diffusion: Flow-GRPO, DiffusionNFT, AWM, DDRL, MARBLE (pure torch)."""

from typing import Any

from diffpipe.schemas import FlowMatching
from diffpipe.tasks.registry import get_implementation

from .base import ContinuousAlgorithm, LossParts, Nets
from .common import Rollout, group_advantages, rollout, sampler_grid, sde_step
from .marble import balance, min_norm_weights


def make_algorithm(spec: Any, objective: FlowMatching) -> ContinuousAlgorithm:
    """The registered algorithm of `spec.algorithm` (one module each), built from its schema object."""
    return get_implementation("algorithm", spec.algorithm)(spec, objective)


__all__ = [
    "ContinuousAlgorithm", "LossParts", "Nets", "Rollout", "balance", "group_advantages", "make_algorithm",
    "min_norm_weights", "rollout", "sampler_grid", "sde_step",
]

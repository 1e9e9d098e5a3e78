"""RL for continuous (flow-matching) diffusion: Flow-GRPO, DiffusionNFT, AWM, DDRL, MARBLE (pure torch)."""

from diffpipe.schemas import FlowMatching

from .awm import AWMAlgorithm
from .base import ContinuousAlgorithm, LossParts, Nets
from .common import Rollout, group_advantages, rollout, sampler_grid, sde_step
from .ddrl import DDRLAlgorithm
from .flow_grpo import FlowGRPOAlgorithm
from .marble import balance, min_norm_weights
from .nft import DiffusionNFTAlgorithm

ALGORITHMS: dict[str, type[ContinuousAlgorithm]] = {
    "flow_grpo": FlowGRPOAlgorithm, "diffusion_nft": DiffusionNFTAlgorithm, "awm": AWMAlgorithm,
    "ddrl": DDRLAlgorithm,
}
"""Continuous algorithm class of each `algorithm` name of the rl stage."""


def make_algorithm(spec, objective: FlowMatching) -> ContinuousAlgorithm:
    """The algorithm object for an algorithm spec (a member of the RLAlgorithm union)."""
    return ALGORITHMS[spec.algorithm](spec, objective)


__all__ = [
    "ALGORITHMS", "AWMAlgorithm", "ContinuousAlgorithm", "DDRLAlgorithm", "DiffusionNFTAlgorithm",
    "FlowGRPOAlgorithm", "LossParts", "Nets", "Rollout", "balance", "group_advantages", "make_algorithm",
    "min_norm_weights", "rollout", "sampler_grid", "sde_step",
]

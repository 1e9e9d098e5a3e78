"""RL for masked-diffusion LMs (pure torch): one module per algorithm, registered under its `algorithm` name."""

from .base import DiscreteAlgorithm, Prepared
from .core import RewardFn, Rollouts, group_advantages, kl_k2, kl_k3, rollout, zero_std_ratio
from .update import count_forwards, make_algorithm

__all__ = [
    "DiscreteAlgorithm", "Prepared", "RewardFn", "Rollouts", "count_forwards", "group_advantages", "kl_k2",
    "kl_k3", "make_algorithm", "rollout", "zero_std_ratio",
]

"""RL for masked-diffusion LMs: diffu-GRPO, coupled-GRPO, ESPO, GDPO, DMPO, wd1 (pure torch)."""

from .algorithms import ALGORITHMS, Algorithm, Prepared
from .core import RewardFn, Rollouts, group_advantages, kl_k2, kl_k3, zero_std_ratio
from .options import (
    OPTIONS,
    CommonOptions,
    CoupledGRPOOptions,
    DiffuGRPOOptions,
    DMPOOptions,
    ESPOOptions,
    GDPOOptions,
    WD1Options,
)
from .update import count_forwards, make_options, rl_update, rollout

__all__ = [
    "ALGORITHMS", "OPTIONS", "Algorithm", "CommonOptions", "CoupledGRPOOptions", "DMPOOptions",
    "DiffuGRPOOptions", "ESPOOptions", "GDPOOptions", "Prepared", "RewardFn", "Rollouts", "WD1Options",
    "count_forwards",
    "group_advantages", "kl_k2", "kl_k3", "make_options", "rl_update", "rollout", "zero_std_ratio",
]

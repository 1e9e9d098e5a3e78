"""Options of each discrete-diffusion RL algorithm, with the reference code's defaults (reference/rl.md).

Values that depend on model scale (learning rate, generation length, LoRA) are not here: the learning
rate belongs to the optimizer, the completion length to the data. Rollout `steps=None` means one token per
step and `block_length=None` one block over the whole completion.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommonOptions:
    """Options every algorithm has: group sampling, inner updates, rollout sampler, gradient clipping."""

    group_size: int = 6
    """Completions sampled per prompt (G)."""
    num_iterations: int = 1
    """Gradient steps per rollout batch (mu); the rollout policy is the 'old' policy of the ratio."""
    temperature: float = 1.0
    """Rollout sampling temperature."""
    steps: int | None = None
    """Rollout decoding steps (None: completion length)."""
    block_length: int | None = None
    """Semi-autoregressive block length (None: one block)."""
    max_grad_norm: float = 0.2
    """Gradient-norm clip (d1, ESPO, DMPO, DiffuCoder yaml: 0.2)."""
    scale_rewards: bool = False
    """Divide advantages by the group's reward std (every reference here sets this off)."""


@dataclass(frozen=True)
class DiffuGRPOOptions(CommonOptions):
    """d1 / diffu-GRPO (dllm-reasoning/d1 837888f, slurm_scripts/train.yaml, diffu_grpo_config.py)."""

    group_size: int = 6
    num_iterations: int = 12
    """train.yaml mu = 12 (the Countdown sbatch uses 8)."""
    temperature: float = 0.9
    """diffu_grpo_config.py default."""
    epsilon: float = 0.5
    """PPO clip range per token."""
    beta: float = 0.04
    """k3 KL weight per token against the reference."""
    p_mask_prompt: float = 0.15
    """Probability of masking each prompt token in the one-step surrogate (train.yaml)."""


@dataclass(frozen=True)
class CoupledGRPOOptions(CommonOptions):
    """coupled-GRPO (apple/ml-diffucoder f735e01, recipes/config_coupled_code.yaml)."""

    group_size: int = 10
    num_iterations: int = 2
    temperature: float = 1.0
    epsilon: float = 0.5
    beta: float = 0.01
    t_min: float = 0.2
    """Lower end of the coupled mask ratio t ~ U(t_min, t_max)."""
    t_max: float = 0.8
    p_mask_prompt: float = 0.0


@dataclass(frozen=True)
class ESPOOptions(CommonOptions):
    """ESPO (ML-GSAI/ESPO b5f2dac, recipes/train.yaml + run_countdown_llada.sh)."""

    group_size: int = 6
    num_iterations: int = 8
    temperature: float = 1.0
    epsilon_low: float = 0.2
    """Lower clip; train.yaml 0.2 (the Countdown recipe sets 0, demo scripts 4e-4)."""
    epsilon_high: float = 0.2
    beta: float = 3e-3
    """k2 weight on the sequence ELBO; 3e-3 Countdown, 1e-2 Sudoku and code, 1e-3 GSM8K and MATH."""
    num_mc: int = 2
    """Complementary-mask pairs per ELBO (2 forwards each)."""


@dataclass(frozen=True)
class GDPOOptions(CommonOptions):
    """GDPO (arXiv 2510.08554; no official code; NeMo-RL port defaults per reference/rl.md 1.2 and 2.6)."""

    group_size: int = 6
    """Not given by the paper: ESPO's recipe value."""
    num_iterations: int = 8
    """Not given by the paper: ESPO's recipe value."""
    temperature: float = 1.0
    epsilon: float = 0.2
    beta: float = 1e-2
    """KL estimator not pinned down by the paper: k2 on the sequence ELBO, as ESPO."""
    quadrature: str = "simpson"
    """'simpson' = t (0.1, 0.5, 1.0), w (1/6, 4/6, 1/6), said to match the reference; or 'gauss'."""
    num_nodes: int = 3
    """Quadrature nodes N (main results use 3); ignored by 'simpson'."""
    fixed_count: bool = True
    """Mask exactly round(t L) tokens per node, as the port says the reference does."""


@dataclass(frozen=True)
class DMPOOptions(CommonOptions):
    """DMPO (yuchen-zhu-zyc/DMPO 96af1a4, dmpo_train_config.yaml + run_dmpo.sh)."""

    group_size: int = 16
    num_iterations: int = 8
    temperature: float = 0.2
    alpha: float = 0.04
    """Temperature of the reward tilt p_ref exp(r / alpha)."""
    weight_coefficient: float = 1.0
    """c in softmax(c (log_rnd +- r / alpha))."""
    centering_strength: float = 1.0
    """s in w+ - s w- (weight baseline subtraction)."""
    num_replicates: int = 4
    """Antithetic mask passes of the weighted denoising cross-entropy."""
    elbo_forwards: int = 4
    """Antithetic passes of each ELBO in log_rnd = ELBO_ref - ELBO_current."""
    t_min: float = 0.1
    """Mask ratio lambda = t_min + (1 - t_min) U."""


@dataclass(frozen=True)
class WD1Options(CommonOptions):
    """wd1 (xiaohangt/wd1 0898985, trainer_type wll_d1_neg, same train.yaml as d1)."""

    group_size: int = 6
    num_iterations: int = 12
    temperature: float = 0.9
    p_mask_prompt: float = 0.15


OPTIONS: dict[str, type[CommonOptions]] = {
    "diffu_grpo": DiffuGRPOOptions, "coupled_grpo": CoupledGRPOOptions, "espo": ESPOOptions,
    "gdpo": GDPOOptions, "dmpo": DMPOOptions, "wd1": WD1Options,
}
"""Options class of each algorithm name."""

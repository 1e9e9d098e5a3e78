"""Discrete RL algorithms of the `rl` stage, for masked-diffusion LM checkpoints (one class each).

Each class is the whole option set of its algorithm, with the defaults of the algorithm's reference code
(source repository and commit in its docstring); its implementation is one module under
`diffpipe/tasks/rl/discrete/` named after the algorithm, which takes this object as its options. Values
that depend on scale are stage fields shared with the continuous algorithms, so one spec compares
methods by changing only `algorithm`: `group_size` (G; the references use 6 for d1, ESPO and wd1, 10
for coupled-GRPO, 16 for DMPO: `reference_group_size`), `groups_per_step` (prompts per rollout batch),
`lr` (3e-6 with LoRA on 8B models; 1e-4..3e-4 for a tiny model trained from scratch) and `grad_clip`
(the references clip to 0.2). Rewards are the data set's exact verifiers (`rewards: [{name:
exact_verifier}]`). Advantages, clipping and KL follow each method, so `global_std` and `marble` do not
apply and `combine` must stay `weighted_sum`. Checkpoints are taken every `checkpoint_every` optimizer
steps rounded up to a multiple of `num_iterations`, so a resumed run starts on a fresh rollout batch.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from .base import Strict
from .reasoning import MaskedDiffusion


class DiscreteAlgorithmBase(Strict):
    """Rollout sampler options every discrete algorithm has; subclasses add the method's own."""

    rollout_steps: int | None = Field(default=None, ge=1)
    """Decoding steps of a rollout (None: one token per step, the completion length)."""
    block_length: int | None = Field(default=None, ge=1)
    """Semi-autoregressive block length of the rollout sampler in tokens (None: one block)."""
    scale_rewards: bool = False
    """Divide advantages by the group's reward std (every reference sets this off)."""

    family: ClassVar[str] = "discrete"
    reference_group_size: ClassVar[int] = 6
    """Completions per prompt (G) of the reference recipe (benchmarks use it; specs set `group_size`)."""

    @property
    def objective(self) -> MaskedDiffusion:
        """RL keeps a masked-diffusion checkpoint a masked-diffusion checkpoint (sample stages check it)."""
        return MaskedDiffusion()

    def check_stage(self, stage: Any) -> None:
        """Raise ValueError (naming the field) where the rl stage's fields do not fit this algorithm."""
        if stage.combine != "weighted_sum":
            raise ValueError(f"combine: discrete algorithms ({self.algorithm}) sum the weighted verifier rewards; "
                             f"expected weighted_sum, found {stage.combine}")


class DiffuGRPO(DiscreteAlgorithmBase):
    """diffu-GRPO (d1): per-token PPO on a one-step mean-field surrogate (completion fully masked).

    Source: dllm-reasoning/d1 837888f (slurm_scripts/train.yaml, diffu_grpo_config.py).
    """

    algorithm: Literal["diffu_grpo"] = "diffu_grpo"
    num_iterations: int = Field(default=12, ge=1)
    """Gradient steps per rollout batch, mu (train.yaml 12; the Countdown sbatch uses 8)."""
    temperature: float = Field(default=0.9, ge=0.0)
    """Rollout sampling temperature (diffu_grpo_config.py)."""
    epsilon: float = Field(default=0.5, gt=0.0)
    """PPO clip range of the per-token ratio."""
    beta: float = Field(default=0.04, ge=0.0)
    """Weight of the per-token k3 KL to the reference (the init checkpoint)."""
    p_mask_prompt: float = Field(default=0.15, ge=0.0, lt=1.0)
    """Probability of masking each prompt token in the surrogate (train.yaml)."""


class CoupledGRPO(DiscreteAlgorithmBase):
    """coupled-GRPO (DiffuCoder): per-token PPO on the full-mask term plus a complementary mask pair.

    Source: apple/ml-diffucoder f735e01 (recipes/config_coupled_code.yaml).
    """

    algorithm: Literal["coupled_grpo"] = "coupled_grpo"
    reference_group_size: ClassVar[int] = 10
    num_iterations: int = Field(default=2, ge=1)
    """Gradient steps per rollout batch, mu."""
    temperature: float = Field(default=1.0, ge=0.0)
    """Rollout sampling temperature."""
    epsilon: float = Field(default=0.5, gt=0.0)
    """PPO clip range of the per-token ratio."""
    beta: float = Field(default=0.01, ge=0.0)
    """Weight of the per-token k3 KL to the reference."""
    t_min: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Lower end of the coupled mask ratio t ~ U(t_min, t_max)."""
    t_max: float = Field(default=0.8, gt=0.0, lt=1.0)
    """Upper end of the coupled mask ratio."""
    p_mask_prompt: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Probability of masking each prompt token in the surrogate."""

    @model_validator(mode="after")
    def _check_range(self) -> CoupledGRPO:
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min: must be below t_max ({self.t_max}); found {self.t_min}")
        return self


class ESPO(DiscreteAlgorithmBase):
    """ESPO: sequence-level PPO on exp((ELBO - ELBO_old) / L) with complementary-mask ELBOs and k2 KL.

    Source: ML-GSAI/ESPO b5f2dac (recipes/train.yaml, run_countdown_llada.sh).
    """

    algorithm: Literal["espo"] = "espo"
    num_iterations: int = Field(default=8, ge=1)
    """Gradient steps per rollout batch, mu."""
    temperature: float = Field(default=1.0, ge=0.0)
    """Rollout sampling temperature."""
    epsilon_low: float = Field(default=0.2, ge=0.0)
    """Lower clip of the sequence ratio (train.yaml 0.2; the Countdown recipe sets 0, demos 4e-4)."""
    epsilon_high: float = Field(default=0.2, ge=0.0)
    """Upper clip of the sequence ratio."""
    beta: float = Field(default=3e-3, ge=0.0)
    """Weight of k2 on the sequence ELBO (3e-3 Countdown, 1e-2 Sudoku and code, 1e-3 GSM8K and MATH)."""
    num_mc: int = Field(default=2, ge=1)
    """Complementary-mask pairs per ELBO estimate (2 forwards each)."""


class GDPO(DiscreteAlgorithmBase):
    """GDPO: sequence-level PPO on exp(ELBO - ELBO_old) with semi-deterministic quadrature ELBOs.

    Source: arXiv 2510.08554 (no official code; NeMo-RL port defaults).
    """

    algorithm: Literal["gdpo"] = "gdpo"
    num_iterations: int = Field(default=8, ge=1)
    """Gradient steps per rollout batch, mu (not given by the paper: ESPO's value)."""
    temperature: float = Field(default=1.0, ge=0.0)
    """Rollout sampling temperature."""
    epsilon: float = Field(default=0.2, gt=0.0)
    """PPO clip range of the sequence ratio."""
    beta: float = Field(default=1e-2, ge=0.0)
    """Weight of k2 on the sequence ELBO (the paper's KL estimator is not pinned down)."""
    quadrature: Literal["simpson", "gauss"] = "simpson"
    """Quadrature rule: simpson = t (0.1, 0.5, 1.0), w (1/6, 4/6, 1/6), said to match the reference; or gauss."""
    num_nodes: int = Field(default=3, ge=1)
    """Quadrature nodes N (main results use 3; simpson always has 3)."""
    fixed_count: bool = True
    """Mask exactly round(t L) tokens per node, as the port says the reference does (else Bernoulli(t))."""


class DMPO(DiscreteAlgorithmBase):
    """DMPO: weighted denoising cross-entropy toward p_ref exp(r / alpha), weights minus anti-weights.

    Source: yuchen-zhu-zyc/DMPO 96af1a4 (dmpo_train_config.yaml, run_dmpo.sh).
    """

    algorithm: Literal["dmpo"] = "dmpo"
    reference_group_size: ClassVar[int] = 16
    num_iterations: int = Field(default=8, ge=1)
    """Gradient steps per rollout batch, mu (the buffer refresh interval)."""
    temperature: float = Field(default=0.2, ge=0.0)
    """Rollout sampling temperature."""
    alpha: float = Field(default=0.04, gt=0.0)
    """Temperature of the reward tilt p_ref exp(r / alpha), in reward units."""
    weight_coefficient: float = Field(default=1.0, gt=0.0)
    """c in softmax(c (log_rnd +- r / alpha))."""
    centering_strength: float = Field(default=1.0, ge=0.0)
    """s in w+ - s w- (weight baseline subtraction; 0 turns it off)."""
    num_replicates: int = Field(default=4, ge=2, multiple_of=2)
    """Antithetic mask passes of the weighted denoising cross-entropy (even)."""
    elbo_forwards: int = Field(default=4, ge=2, multiple_of=2)
    """Antithetic passes of each ELBO in log_rnd = ELBO_ref - ELBO_current (even)."""
    t_min: float = Field(default=0.1, gt=0.0, lt=1.0)
    """Mask ratio lambda = t_min + (1 - t_min) U."""


class WD1(DiscreteAlgorithmBase):
    """wd1: ratio-free; raises softmax(A)-weighted and lowers softmax(-A)-weighted mean-field likelihoods.

    Source: xiaohangt/wd1 0898985 (trainer_type wll_d1_neg, d1's train.yaml).
    """

    algorithm: Literal["wd1"] = "wd1"
    num_iterations: int = Field(default=12, ge=1)
    """Gradient steps per rollout batch, mu."""
    temperature: float = Field(default=0.9, ge=0.0)
    """Rollout sampling temperature."""
    p_mask_prompt: float = Field(default=0.15, ge=0.0, lt=1.0)
    """Probability of masking each prompt token in the surrogate."""


class SDPO(DiscreteAlgorithmBase):
    """SDPO: per-step posterior alignment by a softmax cross-entropy of implicit against true rewards.

    Source: arXiv 2507.04832 (code hanjq17/discrete-diffusion-sdpo, not inspected); defaults from the
    paper's DNA setting as reported by a fork (beta 0.5, lr 1e-5, 2 epochs per round).
    """

    algorithm: Literal["sdpo"] = "sdpo"
    num_iterations: int = Field(default=2, ge=1)
    """Gradient steps per round over the round's completions (the fork trains 2 epochs per round)."""
    temperature: float = Field(default=1.0, ge=0.0)
    """Sampling temperature of the round's completions."""
    beta: float = Field(default=0.5, gt=0.0)
    """KL weight beta of the stepwise problems (fork default 0.5)."""
    beta_schedule: Literal["elbo", "constant"] = "elbo"
    """beta_t = beta / w(t) with the masked-diffusion ELBO weight w(t) = 1 / t (elbo), or beta (constant)."""
    relabel: bool = True
    """Each round samples with the current policy and scores afresh (iterative rounds); off: every round
    samples the frozen reference (one offline data distribution)."""


class TR2D2(DiscreteAlgorithmBase):
    """TR2-D2: tree search over denoising steps fills a replay buffer; weighted denoising cross-entropy.

    Source: sophtang/TR2-D2 4e90f71 (tr2d2-dna/train.sh; argparse defaults where the script sets none).
    The search spends mcts_iterations x num_children reward evaluations per prompt, at most the stage's
    `group_size` (so specs shrink the reference's 5 x 32). Its steps are random-order (the positions to
    unmask do not depend on the model), so each trajectory's log Radon-Nikodym derivative is exact.
    """

    algorithm: Literal["tr2d2"] = "tr2d2"
    reference_group_size: ClassVar[int] = 160
    num_iterations: int = Field(default=5, ge=1)
    """Gradient steps per search (the reference resamples every 5 epochs)."""
    temperature: float = Field(default=1.0, gt=0.0)
    """Sampling temperature of expansions and rollouts (the sampler whose path measure the weights divide by)."""
    mcts_iterations: int = Field(default=5, ge=1)
    """Selection-expansion-rollout iterations per prompt (train.sh 5)."""
    num_children: int = Field(default=32, ge=1)
    """Children of an expanded node, each completed and scored (train.sh 32)."""
    exploration: float = Field(default=0.1, ge=0.0)
    """Weight of the log-probability exploration term of the selection score (train.sh 0.1)."""
    buffer_size: int | None = Field(default=None, ge=1)
    """Distinct top completions kept per prompt (None: mcts_iterations x num_children; train.sh 160 = 5 x 32)."""
    keep_buffer: bool = True
    """Keep each prompt's buffer across searches and checkpoints (off: empty it before each of the prompt's
    searches, as the reference's code does for its single unconditional buffer)."""
    alpha: float = Field(default=0.1, gt=0.0)
    """Temperature of the target p_pre exp(r / alpha) (train.sh 0.1; argparse default 0.001)."""
    reward_clip: float = Field(default=15.0, gt=0.0)
    """Rewards enter log RND clipped to at most this (reference 15)."""
    centering: bool = True
    """Subtract each buffer's mean weight (train.sh sets centering)."""
    num_replicates: int = Field(default=16, ge=1)
    """Random masks per buffer row of the weighted denoising cross-entropy (reference R = 16)."""

    def check_stage(self, stage: Any) -> None:
        """The search's reward evaluations per prompt must fit the stage's rollout budget `group_size`."""
        super().check_stage(stage)
        budget = self.mcts_iterations * self.num_children
        if budget > stage.group_size:
            raise ValueError(f"algorithm.num_children: the search's mcts_iterations x num_children = {budget} reward "
                             f"evaluations per prompt exceed the rollout budget group_size ({stage.group_size})")


DiscreteAlgorithm = DiffuGRPO | CoupledGRPO | ESPO | GDPO | DMPO | WD1 | SDPO | TR2D2
"""The discrete algorithms (members of the rl stage's `algorithm` union)."""

DISCRETE_ALGORITHMS: tuple[type[DiscreteAlgorithmBase], ...] = (DiffuGRPO, CoupledGRPO, ESPO, GDPO, DMPO, WD1, SDPO,
                                                                 TR2D2)
"""Each discrete algorithm class."""

DiscreteAlgorithmSpec = Annotated[DiscreteAlgorithm, Field(discriminator="algorithm")]
"""A discrete algorithm alone, by its `algorithm` name (for benchmarks and tests)."""

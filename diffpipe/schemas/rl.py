"""The `rl` stage: reward fine-tuning of a trained flow-matching checkpoint, one class per algorithm.

Each algorithm class records the reference code's defaults. Values that
depend on model scale (group size, groups per step, learning rate) are stage fields; example specs
shrink them to CPU size. Adding an algorithm = one class here, added to `RLAlgorithm`, plus its loss
module under `diffpipe/tasks/rl/`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from .artifact import ArtifactKind
from .base import Strict
from .distill import FlowMapObjective
from .objectives import FlowMatching
from .reasoning import MaskedDiffusion
from .rl_discrete import DiscreteAlgorithm, DiscreteAlgorithmBase
from .stages import StageBase


class FlowGRPO(Strict):
    """Flow-GRPO: PPO over the per-step Gaussian transitions of an SDE with the ODE's marginals.

    Source: yifan123/flow_grpo ac4c86e (sd3_sde_with_logprob.py, config/grpo.py).
    """

    algorithm: Literal["flow_grpo"] = "flow_grpo"
    sampler_steps: int = Field(default=10, ge=2)
    """SDE steps of a training rollout (reference: 10 for training, 40 ODE steps for evaluation)."""
    noise_level: float = Field(default=0.7, gt=0.0)
    """a in the SDE noise s_t = a sqrt(t / (1 - t)) (reference 0.7)."""
    clip_range: float = Field(default=1e-4, gt=0.0)
    """PPO clip on the per-step likelihood ratio (reference 1e-4)."""
    adv_clip_max: float = Field(default=5.0, gt=0.0)
    """Advantages are clipped to +-this (reference 5)."""
    kl_beta: float = Field(default=0.04, ge=0.0)
    """Weight of the Gaussian KL of step means to the reference model (0.04 GenEval/OCR, 0.01 PickScore)."""
    timestep_fraction: float = Field(default=0.99, gt=0.0, le=1.0)
    """Share of the rollout's steps trained on, from the first (reference 0.99: the last step is skipped)."""
    updates_per_rollout: int = Field(default=2, ge=1)
    """Optimizer steps per rollout batch, each on its own slice (reference: 2 per epoch)."""


class DiffusionNFT(Strict):
    """DiffusionNFT: likelihood-free, trains implicit positive/negative policies on the forward process.

    Source: NVlabs/DiffusionNFT 24af555 (config/nft.py).
    """

    algorithm: Literal["diffusion_nft"] = "diffusion_nft"
    sampler_steps: int = Field(default=10, ge=2)
    """Rollout steps of the old policy (reference: 10 steps of a deterministic 2nd-order solver; here Euler)."""
    noise_level: float = Field(default=0.0, ge=0.0)
    """SDE noise a of the rollout sampler; 0 is the deterministic ODE the reference uses."""
    guidance_strength: float = Field(default=1.0, gt=0.0)
    """b mixing v_theta and v_old into the implicit policies (reference `config.beta` 1.0; 0.1 OCR, multi-reward)."""
    adv_clip_max: float = Field(default=5.0, gt=0.0)
    """Advantages are clipped to +-this, then mapped to r = A / adv_clip_max / 2 + 1/2 in [0, 1]."""
    kl_beta: float = Field(default=1e-4, ge=0.0)
    """Weight of the velocity MSE to the reference model (reference `config.train.beta`: 1e-4)."""
    adaptive_weighting: bool = True
    """Divide each x0 error by its detached mean absolute value (reference default)."""
    old_decay_step: float = Field(default=0.001, ge=0.0)
    """Old policy <- d old + (1 - d) theta after every step, d = min(old_decay_step * step, old_decay_max)."""
    old_decay_max: float = Field(default=0.5, ge=0.0, lt=1.0)
    """Cap of the old policy's decay (reference decay type 1: min(0.001 step, 0.5))."""
    train_timesteps: int | None = Field(default=None, ge=1)
    """Sampler-grid times trained per sample (None: all steps times timestep_fraction, as the reference)."""
    timestep_fraction: float = Field(default=0.99, gt=0.0, le=1.0)
    """Share of the sampler grid whose times are used for training (reference 0.99)."""


class AWM(Strict):
    """Advantage Weighted Matching: the pretraining flow-matching loss on rollouts, weighted by advantage.

    Source: scxue/advantage_weighted_matching be51372 (config/dgx_awm.py).
    """

    algorithm: Literal["awm"] = "awm"
    sampler_steps: int = Field(default=14, ge=2)
    """Rollout steps (reference: 14 SA-Solver steps; here the Flow-GRPO SDE)."""
    noise_level: float = Field(default=0.4, ge=0.0)
    """Rollout SDE noise a (reference 0.4)."""
    timesteps_per_sample: int = Field(default=6, ge=1)
    """Training times per rollout sample, stratified over (0, 1) (reference 6)."""
    time_shift: float = Field(default=3.0, gt=0.0)
    """SD3 time shift of the training times, t = s u / (1 + (s - 1) u) (reference 3.0)."""
    weighting: Literal["none", "t", "t2"] = "none"
    """Per-time weight of the flow-matching loss (the reference also offers huber / ghuber)."""
    adv_clip_max: float = Field(default=5.0, gt=0.0)
    """Advantages are clipped to +-this, then rescaled so that max |A| = 1 (reference)."""
    kl_beta: float = Field(default=1e-3, ge=0.0)
    """Weight of the velocity MSE to the reference model (1e-3 GenEval, 3e-3 OCR)."""
    ema_kl_beta: float = Field(default=1.0, ge=0.0)
    """Weight of the velocity MSE to a fast EMA copy of the policy ('KL-EMA', reference 1)."""
    ema_kl_decay: float = Field(default=0.3, ge=0.0, lt=1.0)
    """Decay of that EMA copy, updated every step (reference 0.3)."""


class DDRL(Strict):
    """DDRL: reward maximisation anchored to the data by the diffusion loss on real samples.

    Source: arXiv 2512.04332 (no public code). The reward term's estimator is ours:
    the flow-matching loss on rollouts weighted by the centred transform -exp(-(r - Z) / beta).
    """

    algorithm: Literal["ddrl"] = "ddrl"
    sampler_steps: int = Field(default=10, ge=2)
    """Rollout steps (not given by the paper)."""
    noise_level: float = Field(default=0.0, ge=0.0)
    """Rollout SDE noise a (0: deterministic ODE)."""
    reward_temperature: float = Field(default=1.0, gt=0.0)
    """beta of lambda((r - Z) / beta) = -exp(-(r - Z) / beta), in reward units (not given by the paper)."""
    data_weight: float = Field(default=1.0, ge=0.0)
    """Weight of the flow-matching loss on real data (the forward KL to the data; not given by the paper)."""
    data_batch_size: int | None = Field(default=None, ge=1)
    """Real samples per step for the data term (None: as many as rollouts)."""
    data_cond_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Probability of dropping the condition in the data term (keeps the unconditional branch anchored)."""
    timesteps_per_sample: int = Field(default=2, ge=1)
    """Training times per rollout sample for the reward term, stratified uniform over (0, 1)."""


RLAlgorithm = Annotated[FlowGRPO | DiffusionNFT | AWM | DDRL | DiscreteAlgorithm, Field(discriminator="algorithm")]
"""RL algorithms: a union on `algorithm` (one class each)."""


class RewardTerm(Strict):
    """One reward plugin by its registered name, with its weight."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    """Registered reward name (digits: `classifier_logprob`, `ink`)."""
    weight: float = 1.0
    """Weight in the weighted sum (combine: weighted_sum); MARBLE balances rewards itself and needs 1."""


class Marble(Strict):
    """MARBLE options: per-reward advantages, gradients combined at the min-norm point of their hull."""

    alpha_ema: float = Field(default=0.9, ge=0.0, lt=1.0)
    """EMA smoothing of the convex weights alpha across steps (0: no smoothing)."""
    normalize_gradients: bool = True
    """Normalise each reward's gradient to unit norm before the min-norm problem (paper)."""


class RLStage(StageBase):
    """Fine-tune a flow-matching or flow-map checkpoint on verifiable rewards with one RL algorithm."""

    stage: Literal["rl"] = "rl"
    init: str
    """Earlier checkpoint stage to fine-tune (a flow_matching checkpoint, or a flow_map student of a midtrain /
    distill stage, rolled out few-step on the algorithm's `sampler_steps` grid; also the KL reference model)."""
    algorithm: RLAlgorithm = Field(default_factory=FlowGRPO)
    """RL algorithm and its options."""
    rewards: list[RewardTerm] = Field(min_length=1)
    """Reward plugins, scored on every rollout."""
    combine: Literal["weighted_sum", "marble"] = "weighted_sum"
    """How several rewards become one update: sum of weighted rewards, or MARBLE gradient balancing."""
    marble: Marble = Field(default_factory=Marble)
    """MARBLE options (combine: marble)."""
    group_size: int = Field(default=24, ge=2)
    """Samples per condition; advantages are normalised within the group (references: 24)."""
    groups_per_step: int = Field(default=48, ge=1)
    """Conditions per rollout batch (references: 48 groups per epoch)."""
    global_std: bool = True
    """Divide advantages by the batch's reward std (Flow-GRPO, NFT, AWM) instead of each group's."""
    steps: int = Field(default=200, ge=1)
    """Optimizer steps."""
    lr: float = Field(default=3e-4, gt=0.0)
    """AdamW learning rate (references: 3e-4 with LoRA)."""
    weight_decay: float = Field(default=1e-4, ge=0.0)
    """AdamW weight decay (references: 1e-4)."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear learning-rate warm-up."""
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    """Global gradient-norm clip (None: off; references: 1.0)."""
    ema_decay: float | None = Field(default=0.9, gt=0.0, lt=1.0)
    """EMA decay of the published weights (DiffusionNFT 0.9, AWM 0.99; None: publish the raw weights)."""
    init_weights: Literal["ema", "online"] = "online"
    """Which weights of `init` start fine-tuning (and serve as the reference model)."""
    checkpoint_every: int = Field(default=50, ge=1)
    """Steps between resumable checkpoints."""
    log_every: int = Field(default=10, ge=1)
    """Steps between log lines."""

    output_kind: ClassVar[ArtifactKind] = "checkpoint"
    references: ClassVar[dict[str, frozenset[str]]] = {"init": frozenset({"checkpoint"})}
    runs_network: ClassVar[bool] = True
    _init_objective: FlowMapObjective | FlowMatching | None = PrivateAttr(default=None)
    """The objective of the `init` stage, read when the pipeline resolves the reference (`reference_problem`)."""

    def reference_problem(self, field: str, target: StageBase) -> str | None:
        """`init` must be a flow-matching or flow-map checkpoint for a continuous algorithm (its objective is kept)."""
        objective = getattr(target, "objective", None)
        if field != "init" or isinstance(self.algorithm, DiscreteAlgorithmBase):
            return None
        if getattr(objective, "kind", None) not in ("flow_matching", "flow_map"):
            return "rl fine-tunes a flow-matching checkpoint or a flow-map (midtrain / distill) student"
        self._init_objective = objective
        return None

    def implementations(self) -> list[tuple[str, str]]:
        """The algorithm and every reward."""
        return [("algorithm", self.algorithm.algorithm), *(("reward", r.name) for r in self.rewards)]

    @property
    def objective(self) -> FlowMatching | FlowMapObjective | MaskedDiffusion:
        """The published checkpoint's objective (so sample stages can check their scheduler): the init's flow-map
        objective for a flow-map student, else flow matching (masked diffusion for the discrete algorithms)."""
        if isinstance(self.algorithm, DiscreteAlgorithmBase):
            return self.algorithm.objective
        if isinstance(self._init_objective, FlowMapObjective):
            return self._init_objective
        return FlowMatching()

    @model_validator(mode="after")
    def _check_consistency(self) -> RLStage:
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"rewards: each reward once; found {names}")
        if self.combine == "marble":
            if len(self.rewards) < 2:
                raise ValueError("combine: marble balances several rewards; found one reward")
            if any(r.weight != 1.0 for r in self.rewards):
                raise ValueError("rewards[].weight: MARBLE balances rewards itself; expected 1.0 for every weight")
        updates = getattr(self.algorithm, "updates_per_rollout", 1)
        if (self.group_size * self.groups_per_step) % updates:
            raise ValueError(f"algorithm.updates_per_rollout: must divide group_size * groups_per_step "
                             f"({self.group_size * self.groups_per_step}); found {updates}")
        if self.checkpoint_every % updates:
            raise ValueError(f"checkpoint_every: must be a multiple of algorithm.updates_per_rollout ({updates}) "
                             f"so a resumed run starts on a fresh rollout batch; found {self.checkpoint_every}")
        if isinstance(self.algorithm, DiscreteAlgorithmBase):
            self.algorithm.check_stage(self)
        return self

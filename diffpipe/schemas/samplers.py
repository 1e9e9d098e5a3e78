"""The `neural_sampler` stage (a union on `method`) and the time-conditioned MLP it trains on continuous targets.

Every method trains a diffusion sampler for an `energy` target without data and publishes its samples with
log importance weights (`samples.zarr`). Continuous methods integrate a controlled SDE
dX = (f_t(X) + sigma_t u(t, X)) dt + sigma_t dW on [0, 1] in `sde_steps` Euler-Maruyama steps; discrete ones
unmask lattice sites one at a time (a masked CTMC). See docs/samplers.md for the losses.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from .artifact import ArtifactKind
from .base import Strict
from .stages import StageBase


class TimeMLPSpec(Strict):
    """An MLP u(t, x) with a sinusoidal embedding of t, for continuous targets; its last layer starts at zero."""

    arch: Literal["time_mlp"] = "time_mlp"
    hidden: int = Field(default=128, ge=4)
    """Width of every hidden layer."""
    layers: int = Field(default=3, ge=1)
    """Hidden layers."""
    time_embedding: int = Field(default=32, ge=2)
    """Width of the sinusoidal embedding of t (even)."""


class NeuralSamplerBase(StageBase):
    """Options every neural sampler shares: the shared training loop's, and the published sample set."""

    stage: Literal["neural_sampler"] = "neural_sampler"
    steps: int = Field(default=1000, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(default=256, ge=2)
    """Trajectories per rollout (and samples per loss batch)."""
    lr: float = Field(default=1e-3, gt=0.0)
    """AdamW learning rate."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    """AdamW weight decay."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear learning-rate warm-up."""
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    """Global gradient-norm clip (None: off)."""
    ema_decay: float | None = Field(default=None, gt=0.0, lt=1.0)
    """EMA decay of the published weights (None: publish the raw weights, which also run the rollouts)."""
    checkpoint_every: int = Field(default=250, ge=1)
    """Steps between resumable checkpoints (they hold the replay buffer too)."""
    log_every: int = Field(default=50, ge=1)
    """Steps between loss log lines."""
    num_samples: int = Field(default=2000, ge=2)
    """Samples (with log importance weights) published after training."""
    seed: int = Field(default=0, ge=0)
    """Offset added to the runtime seed for the network's initial weights and every random draw (replicates)."""

    output_kind: ClassVar[ArtifactKind] = "samples"
    builds_model: ClassVar[bool] = True
    discrete_targets: ClassVar[bool] = False
    continuous_targets: ClassVar[bool] = True

    def fit_problem(self, data: Any, model: Any) -> tuple[str, str, str, str] | None:
        """(field, problem, expected, found) when the method or network cannot sample this data (None: fits)."""
        if getattr(data, "kind", None) != "energy":
            return ("method", "a neural sampler needs a target known up to a constant", "data.kind energy",
                    repr(getattr(data, "kind", None)))
        discrete = data.target.discrete
        if (discrete and not self.discrete_targets) or (not discrete and not self.continuous_targets):
            space = "a discrete lattice" if discrete else "a continuous space"
            fits = "discrete" if self.discrete_targets else "continuous"
            return ("method", f"{self.method} samples {fits} targets, but {data.target.kind} lives on {space}",
                    "a method for that state space", repr(self.method))
        arch = "mdlm" if discrete else "time_mlp"
        if model.arch != arch:
            return ("method", f"{self.method} on a {'discrete' if discrete else 'continuous'} target builds its "
                    f"network from model.arch {arch}", f"model.arch {arch}", repr(model.arch))
        return None


class ContinuousSDE(Strict):
    """Time grid of a continuous sampler."""

    sde_steps: int = Field(default=100, ge=2)
    """Euler-Maruyama steps on [0, 1] per trajectory."""
    resample_every: int = Field(default=10, ge=1)
    """Optimizer steps between rollouts that refill the buffer (buffer-based methods)."""
    samples_per_step: int = Field(default=256, ge=1)
    """Buffer samples per optimizer step (buffer-based methods)."""


class LatticeWarmStart(Strict):
    """MDNS's high-temperature warm start on lattices: the first `warm_start_steps` optimizer steps train for
    the same lattice at inverse temperature `warm_start_beta` (log pi~ = -beta H is rescaled by
    warm_start_beta / beta in the buffer's weights), the rest at the target's own beta."""

    warm_start_beta: float | None = Field(default=None, gt=0.0)
    """Inverse temperature of the warm start (None: no warm start)."""
    warm_start_steps: int = Field(default=0, ge=0)
    """Optimizer steps at `warm_start_beta`; they count towards `steps`."""

    @model_validator(mode="after")
    def _check_warm_start(self) -> LatticeWarmStart:
        if (self.warm_start_beta is None) != (self.warm_start_steps == 0):
            raise ValueError("warm_start_steps: a warm start needs both warm_start_beta and warm_start_steps > 0; "
                             f"found warm_start_beta {self.warm_start_beta}, warm_start_steps "
                             f"{self.warm_start_steps}")
        if self.warm_start_steps >= self.steps:
            raise ValueError(f"warm_start_steps: must be below steps ({self.steps}); found {self.warm_start_steps}")
        return self

    def warm_start_problem(self, data: Any) -> tuple[str, str, str, str] | None:
        """(field, problem, expected, found) when a warm start is asked for on a continuous target."""
        if self.warm_start_beta is not None and not data.target.discrete:
            return ("warm_start_beta", f"the warm start rescales a lattice's -beta H, but {data.target.kind} is "
                    "continuous", "no warm_start_beta", repr(self.warm_start_beta))
        return None


class PDNSSampler(NeuralSamplerBase, ContinuousSDE, LatticeWarmStart):
    """PDNS: proximal steps on path measures; each refill tempers the weights to softmax(gamma log w).

    gamma is the largest value in (0, 1] whose estimated KL between the current sampler and the tempered
    target stays under `trust_region` (bisection). Continuous targets: weighted bridge matching against a
    stationary VP reference N(0, sigma^2); lattices: the masked (WDCE) loss of MDNS with tempered weights.
    """

    method: Literal["pdns"] = "pdns"
    sigma: float = Field(default=1.0, gt=0.0)
    """Std of the VP reference's stationary law N(0, sigma^2 I) (continuous targets)."""
    beta_start: float = Field(default=10.0, gt=0.0)
    """VP rate beta(t) at t = 0 (linear to `beta_end` at t = 1)."""
    beta_end: float = Field(default=0.1, gt=0.0)
    """VP rate at t = 1."""
    trust_region: float = Field(default=0.5, gt=0.0)
    """KL budget epsilon of each proximal step (larger: fewer, bolder steps)."""
    replicates: int = Field(default=8, ge=1)
    """Random masks per lattice sample in the WDCE loss (lattice targets)."""

    discrete_targets: ClassVar[bool] = True

    def fit_problem(self, data: Any, model: Any) -> tuple[str, str, str, str] | None:
        """The base checks, then the warm start's."""
        return super().fit_problem(data, model) or self.warm_start_problem(data)


class MDNSSampler(NeuralSamplerBase, LatticeWarmStart):
    """MDNS: a masked discrete diffusion sampler trained by weighted denoising cross-entropy (WDCE)."""

    method: Literal["mdns"] = "mdns"
    resample_every: int = Field(default=10, ge=1)
    """Optimizer steps between rollouts that refill the buffer."""
    replicates: int = Field(default=8, ge=1)
    """Random masks per buffer sample in the WDCE loss."""

    discrete_targets: ClassVar[bool] = True
    continuous_targets: ClassVar[bool] = False


class NAASSampler(NeuralSamplerBase, ContinuousSDE):
    """NAAS (our reconstruction): an annealed Langevin reference from N(0, prior_std^2) to the target,
    trained by lean-adjoint matching with the state cost log mu - log pi; no importance weights in the loss.

    The initial law is not corrected (the optimal one is tilted), a known bias measured in the benchmark.
    """

    method: Literal["naas"] = "naas"
    prior_std: float = Field(default=1.0, gt=0.0)
    """Std of the prior mu = N(0, prior_std^2 I) the annealing starts from."""
    sigma: float = Field(default=1.0, gt=0.0)
    """Constant diffusion of the annealed Langevin reference."""
    adjoint_clip: float = Field(default=100.0, gt=0.0)
    """Clip on the norm of energy gradients inside the adjoint."""


class PISSampler(NeuralSamplerBase, ContinuousSDE):
    """PIS baseline: Brownian reference from a Dirac at 0, reverse KL (minus the ELBO) backpropagated
    through the whole Euler-Maruyama rollout (a mode-seeking objective)."""

    method: Literal["pis"] = "pis"
    sigma: float = Field(default=1.0, gt=0.0)
    """Constant diffusion of the Brownian reference (its terminal law is N(0, sigma^2 I))."""


class AdjointSampler(NeuralSamplerBase, ContinuousSDE):
    """Adjoint Sampling baseline: VE reference from a Dirac at 0, buffer of terminal samples, regression of
    the control on the terminal adjoint grad E + grad log p_ref(X_1) (constant along the Brownian bridge)."""

    method: Literal["adjoint"] = "adjoint"
    sigma_max: float = Field(default=2.0, gt=0.0)
    """Largest noise level of the VE schedule (the reference's terminal variance is sigma_max^2 - sigma_min^2).

    The first Euler step moves x by about 2 ln(sigma_max / sigma_min) sigma_max^2 / sde_steps times the
    network (1.03 for sigma_max 3, sigma_min 0.01 and 100 steps, which diverged on MW54; 0.42 at the
    default 2): raise sde_steps with sigma_max."""
    sigma_min: float = Field(default=0.01, gt=0.0)
    """Smallest noise level of the VE schedule."""
    buffer_size: int = Field(default=4096, ge=1)
    """FIFO replay buffer of terminal samples."""
    adjoint_clip: float = Field(default=100.0, gt=0.0)
    """Clip on the norm of the energy gradient (the reference code uses 100)."""

    @model_validator(mode="after")
    def _check_schedule(self) -> AdjointSampler:
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max: the VE schedule needs sigma_max > sigma_min ({self.sigma_min}); "
                             f"found {self.sigma_max}")
        return self


NeuralSamplerStage = Annotated[PDNSSampler | MDNSSampler | NAASSampler | PISSampler | AdjointSampler,
                               Field(discriminator="method")]
SAMPLER_CLASSES: tuple[type[NeuralSamplerBase], ...] = (PDNSSampler, MDNSSampler, NAASSampler, PISSampler,
                                                        AdjointSampler)

"""Inference-time search and guidance of the `sample` stage: a union on `method`, one class per method.

Each method spends more network evaluations (NFE) per sample to raise a reward or to follow a better
model, except `chords`, which spends more cores to finish the same solve in fewer sequential rounds.
Continuous methods run on flow-matching checkpoints (digits, CEI, climate); masked methods on
masked-diffusion language models (Countdown, Sudoku); best-of-N on both. The implementation of each
method is one module named in `diffpipe.tasks.registry.SEARCH_MODULES`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .base import Strict

RewardName = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Registered reward plugin name.")

CONTINUOUS = frozenset({"digits", "coulomb_explosion", "climate"})
"""Data kinds whose checkpoints are flow-matching models of real-valued samples."""
MASKED = frozenset({"countdown", "sudoku"})
"""Data kinds whose checkpoints are masked-diffusion token models."""


class SearchBase(Strict):
    """Fields every search method has."""

    data_kinds: ClassVar[frozenset[str]] = CONTINUOUS
    """Data kinds the method applies to."""

    def state_copies(self, steps: int) -> int:
        """Copies of one sample's state the method holds at once (for the memory check at validate)."""
        return 2 * getattr(self, "particles", 1)


class BestOfN(SearchBase):
    """Best-of-N: N independent trajectories per condition, keep the one with the highest reward."""

    method: Literal["best_of_n"] = "best_of_n"
    data_kinds: ClassVar[frozenset[str]] = CONTINUOUS | MASKED
    reward: str = RewardName
    """Reward plugin that picks the winner."""
    particles: int = Field(default=8, ge=1)
    """N trajectories per condition (NFE per sample: N x steps)."""
    noise_level: float = Field(default=0.0, ge=0.0)
    """Continuous data: SDE noise a of each trajectory (0: the Euler ODE from N noises)."""
    temperature: float = Field(default=1.0, gt=0.0)
    """Masked models: temperature of the token draws (the N completions must differ)."""


class FKSteering(SearchBase):
    """Feynman-Kac steering: interacting particles resampled by reward potentials of x0 predictions.

    The potential at a resampling time s uses r_s = reward(x0_hat(x_s)) with x0_hat = x_s - s v:
    `difference` exp(lambda (r_s - r_prev)) (the product telescopes to exp(lambda r(x0)): the tilted
    target), `max` exp(lambda max of r over the particle's history), `immediate` exp(lambda r_s).
    """

    method: Literal["fk_steering"] = "fk_steering"
    reward: str = RewardName
    """Reward plugin of the potentials."""
    particles: int = Field(default=8, ge=2)
    """Particles per condition (NFE per sample: particles x steps)."""
    potential: Literal["difference", "max", "immediate"] = "max"
    """Potential of the resampling weights."""
    strength: float = Field(default=10.0, gt=0.0)
    """lambda, the reward's inverse temperature."""
    noise_level: float = Field(default=0.7, gt=0.0)
    """SDE noise a (resampling needs stochastic transitions)."""
    resample_every: int = Field(default=2, ge=1)
    """Steps between resampling times."""
    resample_start: int = Field(default=0, ge=0)
    """First step index at which particles may be resampled."""
    resample_end: int | None = Field(default=None, ge=1)
    """Step index after which no resampling happens (None: up to the last step)."""
    ess_threshold: float | None = Field(default=0.5, gt=0.0, le=1.0)
    """Resample only when the effective sample size falls below this fraction of particles (None: always)."""


class TreeSearch(SearchBase):
    """Diffusion Tree Sampling (`dts`) and its greedy search variant (`dts_star`) over the reverse SDE.

    Every node stores a state, a visit count and a soft value; a rollout runs from a newly expanded
    node to t = 0 and its terminal reward is backed up the path with the soft Bellman operator
    v = (1/lambda) log(sum_c N_c exp(lambda v_c) / sum_c N_c).
    """

    method: Literal["tree_search"] = "tree_search"
    reward: str = RewardName
    """Reward plugin of the terminal values."""
    variant: Literal["dts", "dts_star"] = "dts"
    """`dts` selects children with probability proportional to exp(lambda v) and returns a tree sample;
    `dts_star` selects by UCT and returns the best leaf found."""
    rollouts: int = Field(default=8, ge=1)
    """Rollouts per condition (each costs the steps from its expanded node down to t = 0)."""
    max_children: int = Field(default=2, ge=1)
    """Children a node may have before selection descends instead of expanding."""
    strength: float = Field(default=10.0, gt=0.0)
    """lambda of the soft values and the selection."""
    exploration: float = Field(default=1.0, ge=0.0)
    """UCT constant c of `dts_star` (value + c sqrt(log N_parent / N_child))."""
    noise_level: float = Field(default=0.7, gt=0.0)
    """SDE noise a of the tree's transitions."""

    def state_copies(self, steps: int) -> int:
        """Every rollout adds up to `steps` nodes."""
        return self.rollouts * steps + 2


class Chords(SearchBase):
    """CHORDS: K cores run the fine Euler solver from staggered start steps, each started by a coarse
    Euler jump and corrected Parareal-style by the core below it. Training-free; no reward."""

    method: Literal["chords"] = "chords"
    cores: int = Field(default=2, ge=2)
    """Parallel workers (processes on this machine), one network evaluation each per round."""
    init_steps: list[int] | None = None
    """Start step of each core, increasing from 0 (None: core k starts at floor(k T / (K + 1)))."""
    hit: int = Field(default=0, ge=0)
    """Which finished core to return, in finishing order (0: the first, K - 1: core 0, the sequential solve)."""

    def state_copies(self, steps: int) -> int:
        """Each core keeps its trajectory's states and velocities."""
        return 2 * self.cores * (steps + 1)

    @model_validator(mode="after")
    def _check_cores(self) -> Chords:
        if self.hit >= self.cores:
            raise ValueError(f"hit: one of the {self.cores} cores' finishes (0..{self.cores - 1}); found {self.hit}")
        starts = self.init_steps
        if starts is not None and (len(starts) != self.cores or starts[0] != 0 or starts != sorted(set(starts))):
            raise ValueError(f"init_steps: {self.cores} increasing start steps from 0; found {self.init_steps}")
        return self

    def starts(self, steps: int) -> list[int]:
        """Start step of every core for a `steps`-step solve."""
        return self.init_steps or [k * steps // (self.cores + 1) for k in range(self.cores)]


class ParticleGibbs(SearchBase):
    """Particle Gibbs for masked diffusion (PG-DDM): conditional SMC over whole denoising trajectories.

    Each iteration runs SMC with `particles` trajectories, one of which is the reference kept from the
    previous iteration; weights are the reward of each particle's one-step completion; the next reference
    is drawn from the final weights. Budget: particles x iterations x steps network evaluations.
    """

    method: Literal["particle_gibbs"] = "particle_gibbs"
    data_kinds: ClassVar[frozenset[str]] = MASKED
    reward: str = RewardName
    """Reward plugin of the potentials (`exact_verifier`, `countdown_closeness`)."""
    particles: int = Field(default=4, ge=2)
    """Particles per prompt."""
    iterations: int = Field(default=2, ge=1)
    """Gibbs iterations (conditional SMC sweeps)."""
    strength: float = Field(default=5.0, gt=0.0)
    """1 / beta: inverse temperature of the reward-weighted posterior."""
    temperature: float = Field(default=1.0, gt=0.0)
    """Sampling temperature of the token draws (the trajectories must be stochastic)."""


class RewardFreeGuidance(SearchBase):
    """RFG: guided logits (1 + w) l_policy - w l_reference of an RL'd checkpoint and its reference."""

    method: Literal["rfg"] = "rfg"
    data_kinds: ClassVar[frozenset[str]] = MASKED
    reference: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    """Earlier checkpoint stage of the reference model (the sample stage's `model` is the policy)."""
    weight: float = Field(default=1.0, ge=0.0)
    """w (0: the policy alone)."""

    def state_copies(self, steps: int) -> int:
        """Two models' logits per step."""
        return 2


class DiscreteCFG(SearchBase):
    """Classifier-free guidance of a prompt-conditioned masked model, column-normalised over clean tokens.

    Guided logits l_u + (1 + w_t)(l_c - l_u) with l_u from the prompt masked out; the guided distribution
    is normalised over clean tokens only, so the unmasking schedule of the base sampler is kept.
    """

    method: Literal["discrete_cfg"] = "discrete_cfg"
    data_kinds: ClassVar[frozenset[str]] = MASKED
    weight: float = Field(default=1.0, ge=0.0)
    """w_max."""
    schedule: Literal["constant", "smooth"] = "smooth"
    """`constant` w_t = w; `smooth` w_t = w sin^2(pi/2 progress): weak early (heavily masked), strong late."""

    def state_copies(self, steps: int) -> int:
        """Conditional and unconditional logits per step."""
        return 2


SearchMethod = Annotated[BestOfN | FKSteering | TreeSearch | Chords | ParticleGibbs | RewardFreeGuidance |
                         DiscreteCFG, Field(discriminator="method")]
"""Inference-time methods of the sample stage: a union on `method`."""

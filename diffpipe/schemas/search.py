"""Inference-time search and guidance of the `sample` stage: a union on `method`, one class per method.

Each method spends more network evaluations (NFE) per sample to raise a reward. The continuous methods
run on flow-matching checkpoints (digits, CEI, climate). The implementation of each method is one
module named in `diffpipe.tasks.registry.SEARCH_MODULES`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .base import Strict

RewardName = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Registered reward plugin name.")

CONTINUOUS = frozenset({"digits", "coulomb_explosion", "climate"})
"""Data kinds whose checkpoints are flow-matching models of real-valued samples."""


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
    reward: str = RewardName
    """Reward plugin that picks the winner."""
    particles: int = Field(default=8, ge=1)
    """N trajectories per condition (NFE per sample: N x steps)."""
    noise_level: float = Field(default=0.0, ge=0.0)
    """SDE noise a of each trajectory (0: the Euler ODE from N noises)."""


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


SearchMethod = Annotated[BestOfN | FKSteering | TreeSearch, Field(discriminator="method")]
"""Inference-time methods of the sample stage: a union on `method`."""

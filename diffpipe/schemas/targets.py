"""Targets known up to a constant (`data.kind: energy`): a union on `target.kind`.

Each target is a density pi(x) = exp(-beta E(x)) / Z with a closed-form energy. Where it exists the data
stage computes the exact log Z (closed form, product structure, enumeration or a row transfer matrix)
and draws ground-truth samples exactly; otherwise it runs a long, checked MCMC (Dask-parallel chains).
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .base import Strict

MAX_TRANSFER_STATES = 4096
"""Largest number of row states (q^L) the transfer matrix for an exact lattice log Z may have."""
MAX_ENUMERATED_STATES = 2**20
"""Largest number of lattice configurations (q^(L*L)) drawn exactly by enumeration."""


class GaussianMixtureTarget(Strict):
    """Equal-weight mixture of isotropic Gaussians with means uniform on [-loc_scale, loc_scale]^dim (log Z = 0).

    The defaults are the 40-mode 2-D benchmark: means (U(0,1) - 0.5) * 80 drawn with torch seed 0 and std
    softplus(1) = 1.3133 per axis.
    """

    kind: Literal["gmm"] = "gmm"
    num_modes: int = Field(default=40, ge=1)
    """Number of mixture components."""
    dim: int = Field(default=2, ge=1)
    """Dimension of the space."""
    loc_scale: float = Field(default=40.0, gt=0.0)
    """Half-width of the box the means are drawn in."""
    std: float = Field(default=1.3133, gt=0.0)
    """Standard deviation of every component along every axis."""
    mean_seed: int = 0
    """torch seed the means are drawn with (seed 0 gives the usual GMM-40 layout)."""

    discrete: ClassVar[bool] = False


class ManyWellTarget(Strict):
    """E(x) = sum_{i<=wells} (x_i^2 - delta)^2 + 1/2 sum_{i>wells} x_i^2: 2^wells modes at x_i = +-sqrt(delta).

    Product structure: log Z = wells * log int exp(-(x^2 - delta)^2) dx + (dim - wells)/2 log(2 pi), exact
    samples by a 1-D inverse CDF per double-well coordinate. Defaults: MW54 (d=5, 32 modes, log Z -0.541056).
    """

    kind: Literal["many_well"] = "many_well"
    dim: int = Field(default=5, ge=1)
    """Dimension of the space."""
    wells: int = Field(default=5, ge=1)
    """Coordinates with a double well (the rest are standard Gaussians)."""
    delta: float = Field(default=4.0, gt=0.0)
    """Squared position of the wells."""

    discrete: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check_wells(self) -> ManyWellTarget:
        if self.wells > self.dim:
            raise ValueError(f"wells: must not exceed dim ({self.dim}); found {self.wells}")
        return self


class DoubleWellParticlesTarget(Strict):
    """DW-4: n particles in 2-D, E = sum_{i<j} a (r_ij - d0)^4 + b (r_ij - d0)^2 + c, at a temperature.

    The energy depends only on distances; a harmonic term com_stiffness/2 * n |centre of mass|^2 makes the
    density normalisable without changing the distribution of relative positions. No exact log Z: ground
    truth comes from a long Metropolis run checked by R-hat.
    """

    kind: Literal["dw4"] = "dw4"
    num_particles: int = Field(default=4, ge=2)
    """Number of particles."""
    spatial_dim: int = Field(default=2, ge=1, le=3)
    """Dimension each particle lives in."""
    a: float = Field(default=0.9, gt=0.0)
    """Quartic coefficient."""
    b: float = -4.0
    """Quadratic coefficient (negative: a double well in each distance)."""
    c: float = 0.0
    """Constant per pair."""
    d0: float = Field(default=4.0, gt=0.0)
    """Distance the wells are centred on."""
    temperature: float = Field(default=1.0, gt=0.0)
    """Temperature (pi is exp(-E / temperature))."""
    com_stiffness: float = Field(default=1.0, gt=0.0)
    """Stiffness of the centre-of-mass confinement."""

    discrete: ClassVar[bool] = False


class LatticeTarget(Strict):
    """Options shared by the periodic L x L lattice models."""

    size: int = Field(default=4, ge=2, le=64)
    """Side L of the periodic lattice."""
    coupling: float = 1.0
    """Coupling J of nearest neighbours (right and down bonds, periodic)."""
    beta: float = Field(default=0.4407, gt=0.0)
    """Inverse temperature (must be positive)."""
    exact_log_z: bool = True
    """Compute the exact log Z by a row transfer matrix (needs q^L <= 4096 row states)."""

    discrete: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check_exact(self) -> LatticeTarget:
        if self.exact_log_z and self.num_states ** self.size > MAX_TRANSFER_STATES:
            largest = int(math.log(MAX_TRANSFER_STATES) / math.log(self.num_states) + 1e-9)
            raise ValueError(f"size: a {self.size}x{self.size} lattice with {self.num_states} states has "
                             f"{self.num_states}^{self.size} row states, too many for the exact log Z "
                             f"(at most {MAX_TRANSFER_STATES}: size <= {largest}); set exact_log_z: false")
        return self

    @property
    def num_sites(self) -> int:
        """Number of lattice sites L*L."""
        return self.size * self.size


class IsingTarget(LatticeTarget):
    """Ising model, H = -J sum s_i s_j - h sum s_i with s in {-1, +1} (stored as tokens 0, 1), pi ~ exp(-beta H)."""

    kind: Literal["ising"] = "ising"
    field: float = 0.0
    """External field h."""

    @property
    def num_states(self) -> int:
        """States per site."""
        return 2


class PottsTarget(LatticeTarget):
    """q-state Potts model, H = -J sum delta(s_i, s_j), pi ~ exp(-beta H)."""

    kind: Literal["potts"] = "potts"
    q: int = Field(default=3, ge=2, le=10)
    """States per site."""
    beta: float = Field(default=1.005, gt=0.0)
    """Inverse temperature (must be positive; q=3 critical point ln(1 + sqrt 3) = 1.005)."""

    @property
    def num_states(self) -> int:
        """States per site."""
        return self.q


TargetSpec = Annotated[GaussianMixtureTarget | ManyWellTarget | DoubleWellParticlesTarget | IsingTarget | PottsTarget,
                       Field(discriminator="kind")]


class MCMCSpec(Strict):
    """The ground-truth MCMC run for targets without exact samples: Dask-parallel chains, checked by R-hat."""

    chains: int = Field(default=8, ge=2)
    """Independent chains (one Dask task each)."""
    walkers_per_chain: int = Field(default=64, ge=1)
    """Vectorised walkers inside each chain task (each counts as a chain for R-hat)."""
    burn_in: int = Field(default=2000, ge=0)
    """Sweeps discarded at the start."""
    sweeps: int = Field(default=4000, ge=1)
    """Sweeps kept after burn-in."""
    thin: int = Field(default=10, ge=1)
    """Keep every `thin`-th sweep."""
    step_size: float = Field(default=0.3, gt=0.0)
    """Random-walk proposal std per coordinate (continuous targets)."""
    max_rhat: float = Field(default=1.05, gt=1.0)
    """Largest split R-hat of the energy accepted; larger fails the data stage."""


class EnergyData(Strict):
    """A target known up to a constant, with its exact log Z and ground-truth samples where they exist."""

    kind: Literal["energy"] = "energy"
    target: TargetSpec
    """The density to sample."""
    num_reference: int = Field(default=2000, ge=10)
    """Ground-truth samples stored for evaluation."""
    mcmc: MCMCSpec = Field(default_factory=MCMCSpec)
    """The MCMC run used when exact samples cannot be drawn."""
    seed: int = 0
    """Seed of the ground-truth sampler."""

    @property
    def discrete(self) -> bool:
        """Whether the target lives on a lattice (token states) rather than R^d."""
        return self.target.discrete

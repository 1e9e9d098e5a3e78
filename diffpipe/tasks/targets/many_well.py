"""Many-well target: a product of 1-D double wells and Gaussians, so log Z and exact samples are exact."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate

from diffpipe.schemas.targets import ManyWellTarget

GRID_POINTS = 200_001
"""Points of the 1-D grid the inverse CDF of a double-well factor is tabulated on."""


class ManyWell:
    """log pi(x) = -sum_{i<=m} (x_i^2 - delta)^2 - 1/2 sum_{i>m} x_i^2 (unnormalised), 2^m modes."""

    discrete = False

    def __init__(self, spec: ManyWellTarget):
        self.dim, self.wells, self.delta = spec.dim, spec.wells, spec.delta

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density of a batch (B, dim)."""
        well = (x[:, : self.wells].square() - self.delta).square().sum(-1)
        return -well - 0.5 * x[:, self.wells:].square().sum(-1)

    def _well_integral(self) -> float:
        edge = math.sqrt(self.delta) + 10.0
        value, _ = integrate.quad(lambda t: math.exp(-((t * t - self.delta) ** 2)), -edge, edge,
                                  points=[-math.sqrt(self.delta), 0.0, math.sqrt(self.delta)], limit=200)
        return value

    def log_z(self) -> float:
        """m log int exp(-(t^2 - delta)^2) dt + (dim - m)/2 log(2 pi), by quadrature of one factor."""
        return self.wells * math.log(self._well_integral()) + 0.5 * (self.dim - self.wells) * math.log(2 * math.pi)

    def exact_sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Exact samples: inverse CDF per double-well coordinate (tabulated), standard normals for the rest."""
        edge = math.sqrt(self.delta) + 4.0
        grid = np.linspace(-edge, edge, GRID_POINTS)
        density = np.exp(-((grid**2 - self.delta) ** 2))
        cdf = integrate.cumulative_trapezoid(density, grid, initial=0.0)
        cdf /= cdf[-1]
        u = torch.rand(n, self.wells, generator=gen, dtype=torch.float64).numpy()
        wells = torch.from_numpy(np.interp(u, cdf, grid))
        rest = torch.randn(n, self.dim - self.wells, generator=gen, dtype=torch.float64)
        return torch.cat([wells, rest], dim=1).float()

    @property
    def num_modes(self) -> int:
        """Number of wells 2^m."""
        return 2**self.wells

    def mode_of(self, x: torch.Tensor) -> torch.Tensor:
        """Mode index: the sign pattern of the double-well coordinates as a binary number."""
        bits = (x[:, : self.wells] > 0).long()
        return (bits * (2 ** torch.arange(self.wells))).sum(-1)

"""DW-4: particles with a double-well pair potential in the distance (no exact log Z; MCMC ground truth)."""

from __future__ import annotations

import torch

from diffpipe.schemas.targets import DoubleWellParticlesTarget


class DoubleWellParticles:
    """log pi(x) = -sum_{i<j} [a (r_ij - d0)^4 + b (r_ij - d0)^2 + c] / T - k/2 n |mean_i x_i|^2."""

    discrete = False

    def __init__(self, spec: DoubleWellParticlesTarget):
        self.spec = spec
        self.num_particles, self.spatial_dim = spec.num_particles, spec.spatial_dim
        self.dim = spec.num_particles * spec.spatial_dim

    def pair_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Distances r_ij, i < j, of a batch (B, n * spatial_dim): shape (B, n (n - 1) / 2)."""
        pos = x.reshape(x.shape[0], self.num_particles, self.spatial_dim)
        i, j = torch.triu_indices(self.num_particles, self.num_particles, 1)
        return (pos[:, i] - pos[:, j]).square().sum(-1).clamp_min(1e-12).sqrt()

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """The pair energy E(x) (in energy units, without the centre-of-mass term)."""
        s = self.spec
        d = self.pair_distances(x) - s.d0
        return (s.a * d**4 + s.b * d**2 + s.c).sum(-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density of a batch (B, dim)."""
        com = x.reshape(x.shape[0], self.num_particles, self.spatial_dim).mean(1)
        return -self.energy(x) / self.spec.temperature - 0.5 * self.spec.com_stiffness * self.num_particles * \
            com.square().sum(-1)

    def log_z(self) -> None:
        """No exact log Z."""
        return None

    def exact_sample(self, n: int, gen: torch.Generator) -> None:
        """No exact sampler (the data stage runs MCMC)."""
        return None

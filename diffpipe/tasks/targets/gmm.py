"""Equal-weight isotropic Gaussian mixture (GMM-40 by default): exact log Z = 0, exact samples, mode labels."""

from __future__ import annotations

import math

import torch

from diffpipe.schemas.targets import GaussianMixtureTarget


class GaussianMixture:
    """pi(x) = 1/K sum_k N(x; mu_k, std^2 I), normalised (log Z = 0)."""

    discrete = False

    def __init__(self, spec: GaussianMixtureTarget):
        gen = torch.Generator().manual_seed(spec.mean_seed)
        self.means = (torch.rand(spec.num_modes, spec.dim, generator=gen) - 0.5) * 2 * spec.loc_scale
        self.std, self.dim, self.num_modes = spec.std, spec.dim, spec.num_modes

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log pi(x) for a batch (B, dim)."""
        means = self.means.to(x)
        sq = torch.cdist(x, means).square()
        norm = math.log(self.num_modes) + 0.5 * self.dim * math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(-0.5 * sq / self.std**2, dim=-1) - norm

    def log_z(self) -> float:
        """The mixture is normalised."""
        return 0.0

    def exact_sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n exact samples: a uniform component, then its Gaussian."""
        k = torch.randint(0, self.num_modes, (n,), generator=gen)
        return self.means[k] + self.std * torch.randn(n, self.dim, generator=gen)

    def mode_of(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest component mean of every sample."""
        return torch.cdist(x.float(), self.means).argmin(dim=-1)

    def in_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Whether each sample lies inside its nearest component's 99% ball (|x - mu|^2 / std^2 <= chi2_d(0.99))."""
        from scipy.stats import chi2

        radius = self.std * float(chi2.ppf(0.99, self.dim)) ** 0.5
        return torch.cdist(x.float(), self.means).min(dim=-1).values <= radius

"""Distribution distances between sample sets (flattened): MMD with an RBF kernel and sliced Wasserstein."""

from __future__ import annotations

import torch


def median_bandwidth(z: torch.Tensor) -> float:
    """Median pairwise Euclidean distance within one sample set (the median heuristic)."""
    z = z.flatten(1).double()
    d = torch.cdist(z, z)
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, bandwidths: list[float]) -> torch.Tensor:
    """Sum over bandwidths h of exp(-|a - b|^2 / (2 h^2))."""
    d2 = torch.cdist(a, b).pow(2)
    return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidths: list[float]) -> float:
    """Unbiased estimate of MMD^2 between samples x and y (rows) with a summed RBF kernel; may be < 0."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = rbf_kernel(x, x, bandwidths), rbf_kernel(y, y, bandwidths), rbf_kernel(x, y, bandwidths)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int, gen: torch.Generator) -> float:
    """Sliced 1-Wasserstein distance: mean over random unit directions of the 1-D W1 of projections."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    dirs = torch.randn(x.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    q = torch.linspace(0, 1, max(x.shape[0], y.shape[0]), dtype=torch.float64)
    px = torch.quantile((x @ dirs), q, dim=0)
    py = torch.quantile((y @ dirs), q, dim=0)
    return float((px - py).abs().mean())

"""Model-collapse measures on flattened feature vectors: entropy, memorisation, entropy-raising selection.

- Kozachenko-Leonenko entropy, H = psi(n) - psi(k) + log c_d + (d / n) sum_i log eps_k(i), with c_d the
  volume of the unit d-ball and eps_k(i) the distance from point i to its k-th nearest other point (nats).
  For a fixed n and d only the mean log-distance moves, so it compares sets of equal size.
- Memorisation: the mean distance from each generated sample to its nearest training point (the
  generalisation score GS), beside the same distance to a held-out set of the same size; their ratio is
  about 1 for a model that generalises and falls towards 0 for one that copies its training set.
- Greedy farthest-point (k-centre) selection: start from a random point, then keep adding the candidate
  farthest from everything kept; it spreads the kept set and so raises its entropy estimate.
"""

from __future__ import annotations

import math

import torch

DISTANCE_FLOOR = 1e-8
"""Distances below this (exact copies) count as this in the entropy's log-distances."""


def kl_entropy(x: torch.Tensor, k: int = 1) -> float:
    """Kozachenko-Leonenko estimate of the differential entropy (nats) of the rows of `x`, flattened."""
    x = x.flatten(1).double()
    n, d = x.shape
    if n <= k:
        raise ValueError(f"the entropy estimate needs more than k = {k} points; found {n}")
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(math.inf)
    eps = dist.kthvalue(k, dim=1).values.clamp(min=DISTANCE_FLOOR)
    log_unit_ball = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)
    digamma = torch.special.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64))
    return float(digamma[0] - digamma[1] + log_unit_ball + d * eps.log().mean())


def nearest_distance(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Distance from each row of `x` to its nearest row of `reference` (both flattened)."""
    return torch.cdist(x.flatten(1).double(), reference.flatten(1).double()).min(dim=1).values


def memorisation(samples: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor,
                 gen: torch.Generator) -> dict[str, float]:
    """Mean nearest-neighbour distance of samples to the training set and to held-out data (equal sizes)."""
    n = min(len(train), len(heldout))
    train = train[torch.randperm(len(train), generator=gen)[:n]]
    heldout = heldout[torch.randperm(len(heldout), generator=gen)[:n]]
    to_train, to_heldout = nearest_distance(samples, train), nearest_distance(samples, heldout)
    return {"nn_distance_train": float(to_train.mean()), "nn_distance_heldout": float(to_heldout.mean()),
            "memorisation_ratio": float(to_train.mean() / to_heldout.mean()),
            "copy_fraction": float((to_train < 0.5 * to_heldout).double().mean()), "reference_size": n}


def farthest_point_selection(x: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of m rows of `x` chosen greedily, each the farthest from those chosen before (first: random)."""
    flat = x.flatten(1).double()
    if not 1 <= m <= len(flat):
        raise ValueError(f"cannot select {m} of {len(flat)} candidates")
    chosen = [int(torch.randint(len(flat), (1,), generator=gen))]
    nearest = (flat - flat[chosen[0]]).norm(dim=1)
    nearest[chosen[0]] = -math.inf
    for _ in range(m - 1):
        chosen.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, (flat - flat[chosen[-1]]).norm(dim=1))
        nearest[chosen[-1]] = -math.inf  # kept points stay -inf, so even duplicates are never taken twice
    return torch.tensor(chosen)

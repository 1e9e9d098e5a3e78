"""MARBLE: one advantage per reward; per-reward gradients combined at the min-norm point of their convex hull.

arXiv 2605.06507 (README-only code): normalise each reward's gradient g_k,
solve min ||sum_k alpha_k g_k||^2 over the simplex (MGDA), smooth alpha by EMA across steps. The
combined update has a non-negative inner product with every reward's gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def min_norm_weights(gram: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Convex weights alpha minimising alpha^T G alpha (Frank-Wolfe with exact line search; exact for K = 2)."""
    k = gram.shape[0]
    alpha = torch.full((k,), 1.0 / k, dtype=gram.dtype)
    for _ in range(iterations):
        vertex = int(torch.argmin(gram @ alpha))
        vv, vg, gg = alpha @ gram @ alpha, (gram @ alpha)[vertex], gram[vertex, vertex]
        denominator = vv - 2 * vg + gg
        if denominator <= 1e-12:
            break
        gamma = float(((vv - vg) / denominator).clamp(0.0, 1.0))
        if gamma < 1e-9:
            break
        alpha = (1 - gamma) * alpha
        alpha[vertex] += gamma
    return alpha


@dataclass
class Balanced:
    """The combined loss to back-propagate, the weights used and how the rewards' gradients related."""

    loss: torch.Tensor
    alpha: torch.Tensor
    gradient_norms: torch.Tensor
    min_cosine: float
    """Smallest cosine between the combined update and any reward's gradient (negative: a conflict)."""


def flat_gradients(losses: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K, P) gradients of each of K losses with respect to `params` (one backward each, graph retained)."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params, strict=True)]))
    return torch.stack(rows)


def balance(losses: torch.Tensor, params: Sequence[torch.Tensor], previous_alpha: torch.Tensor | None,
            alpha_ema: float, normalize: bool) -> Balanced:
    """sum_k alpha_k L_k / |g_k| (or L_k unnormalised) with alpha the EMA-smoothed min-norm weights."""
    grads = flat_gradients(losses, params)
    norms = grads.norm(dim=1).clamp(min=1e-12)
    unit = grads / norms[:, None] if normalize else grads
    alpha = min_norm_weights(unit @ unit.T)
    if previous_alpha is not None:
        alpha = alpha_ema * previous_alpha.to(alpha) + (1 - alpha_ema) * alpha
    scale = (alpha / norms) if normalize else alpha
    direction = scale @ grads
    cosines = grads @ direction / (norms * direction.norm().clamp(min=1e-12))
    return Balanced((scale.detach() * losses).sum(), alpha.detach(), norms.detach(), float(cosines.min()))

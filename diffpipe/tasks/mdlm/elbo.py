"""Estimators of the masked-diffusion ELBO, one interface, and the exact ELBO by enumerating masks.

ELBO(y|q) = E_{t~U(0,1)} E_{m~Bernoulli(t)^L} [ (1/t) sum_{i in m} log p(y_i | y with m masked, q) ]
          = sum_{l=1..L} (1/l) E_{|m|=l} [ sum_{i in m} log p(y_i | ...) ]            (count form)
Writing a_l = sum over masks of size l of sum_{i in m} log p, the time integrand is the polynomial
g(t) = sum_l a_l t^(l-1) (1-t)^(L-l) and ELBO = sum_l a_l / (l * C(L, l)).

Estimators (budget = forward passes per sequence; all but quadrature are unbiased for the ELBO):
- "mc"          random time: l ~ U{1..L} (l = ceil(t L), t ~ U(0,1)), a uniform mask of size l, weight L/l.
                Fixed-count masking as in LLaDA; Bernoulli masks with weight 1/t have infinite variance.
- "stratified"  as "mc" with the K draws' times stratified: t_k = (k + u)/K (ESPO stratifies over the batch).
- "antithetic"  complementary pairs (m, not m), l = |m| ~ U{1..L} stratified over the pairs, weights L/l and
                L/(L-l), each pair averaged (DiffuCoder/ESPO/DMPO "coupled" masks).
- "quadrature"  GDPO's semi-deterministic MC: fixed nodes t_n with weights w_n, one random mask per node.
                fixed_count=True (what the NeMo-RL port says GDPO's code does): exactly round(t_n L) tokens,
                weight w_n L / round(t_n L); a quadrature of the count-form integrand, biased.
                fixed_count=False: a Bernoulli(t_n) mask and weight w_n / t_n; unbiased for sum_n w_n g(t_n),
                which is the exact ELBO once the rule integrates polynomials of degree L-1 exactly
                (Gauss-Legendre with N >= L/2 nodes).
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import torch

from .plans import MaskPlan, masked_token_logps, plan_estimate, random_subset_masks

ESTIMATORS = ("mc", "stratified", "antithetic", "quadrature")
QUADRATURE_RULES = ("gauss", "simpson")
SIMPSON_NODES = ((0.1, 0.5, 1.0), (1 / 6, 4 / 6, 1 / 6))
"""Simpson-type rule the NeMo-RL GDPO port says matches the GDPO reference."""
MAX_EXACT_LENGTH = 12


def quadrature_rule(rule: str, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in (0, 1] and weights summing to 1 of a quadrature rule on [0, 1]."""
    if rule == "simpson":
        return np.array(SIMPSON_NODES[0]), np.array(SIMPSON_NODES[1])
    if rule == "gauss":
        nodes, weights = np.polynomial.legendre.leggauss(num_nodes)
        return (nodes + 1) / 2, weights / 2
    raise ValueError(f"unknown quadrature rule {rule!r}; expected one of {QUADRATURE_RULES}")


def draw_elbo_plan(estimator: str, batch_size: int, length: int, num_forwards: int,
                   generator: torch.Generator | None = None, *, rule: str = "gauss",
                   fixed_count: bool = True) -> MaskPlan:
    """A mask plan of `num_forwards` passes per sequence for one of ESTIMATORS (CPU tensors)."""
    if estimator == "mc":
        sizes = torch.randint(1, length + 1, (num_forwards, batch_size), generator=generator)
        return _count_plan(sizes, length, num_forwards, generator)
    if estimator == "stratified":
        offsets = torch.rand(1, batch_size, generator=generator)
        times = (torch.arange(num_forwards).unsqueeze(1) + offsets) / num_forwards
        sizes = torch.ceil(times * length).long().clamp(1, length)
        return _count_plan(sizes, length, num_forwards, generator)
    if estimator == "antithetic":
        return _antithetic_plan(batch_size, length, num_forwards, generator)
    if estimator == "quadrature":
        nodes, weights = quadrature_rule(rule, num_forwards)
        if fixed_count:
            sizes = torch.tensor(np.clip(np.rint(nodes * length), 1, length), dtype=torch.long)
            node_weights = (torch.tensor(weights, dtype=torch.float32) * length / sizes.float()).view(-1, 1)
            masks = random_subset_masks(sizes.view(-1, 1).expand(-1, batch_size), length, generator)
            return MaskPlan(masks, node_weights.expand(-1, batch_size).clone())
        times = torch.tensor(nodes, dtype=torch.float32)
        node_weights = torch.tensor(weights / nodes, dtype=torch.float32)
        return bernoulli_time_plan(times, node_weights, batch_size, length, generator)
    raise ValueError(f"unknown ELBO estimator {estimator!r}; expected one of {ESTIMATORS}")


def _count_plan(sizes: torch.Tensor, length: int, num_forwards: int,
                generator: torch.Generator | None) -> MaskPlan:
    """Uniform masks of the given sizes (K, B) with weight L / size, averaged over the K passes."""
    return MaskPlan(random_subset_masks(sizes, length, generator), length / sizes.float() / num_forwards)


def _antithetic_plan(batch_size: int, length: int, num_forwards: int,
                     generator: torch.Generator | None) -> MaskPlan:
    """Complementary pairs (m, not m), |m| = l stratified over the pairs, weights L/l and L/(L-l), halved.

    When l = L the complement is empty and the full mask gets both halves, so each pair stays unbiased
    without ESPO's extra empty pass (ESPO draws l in {0..L} with weights (L+1)/l).
    """
    if num_forwards % 2:
        raise ValueError(f"the antithetic estimator needs an even number of forwards, got {num_forwards}")
    pairs = num_forwards // 2
    offsets = torch.rand(1, batch_size, generator=generator)
    times = (torch.arange(pairs).unsqueeze(1) + offsets) / pairs
    sizes = torch.ceil(times * length).long().clamp(1, length)
    masks = random_subset_masks(sizes, length, generator)
    full = sizes == length
    first = torch.where(full, 1.0, 0.5 * length / sizes.float())
    second = torch.where(full, 0.0, 0.5 * length / (length - sizes).clamp(min=1).float())
    return MaskPlan(torch.cat([masks, ~masks]), torch.cat([first, second]) / pairs)


def bernoulli_time_plan(times: torch.Tensor, weights: torch.Tensor, batch_size: int, length: int,
                        generator: torch.Generator | None) -> MaskPlan:
    """One Bernoulli(t_k) mask per pass k for each sequence, with weight weights[k]."""
    noise = torch.rand(times.shape[0], batch_size, length, generator=generator)
    masks = noise < times.view(-1, 1, 1)
    return MaskPlan(masks, weights.view(-1, 1).expand(-1, batch_size).clone())


def estimate_elbo(model: torch.nn.Module, prompt: torch.Tensor, completion: torch.Tensor, estimator: str,
                  num_forwards: int, mask_token_id: int, generator: torch.Generator | None = None,
                  *, rule: str = "gauss", fixed_count: bool = True) -> torch.Tensor:
    """ELBO estimate per sequence (B,) with `num_forwards` network passes per sequence."""
    plan = draw_elbo_plan(estimator, prompt.shape[0], completion.shape[1], num_forwards, generator, rule=rule,
                          fixed_count=fixed_count)
    return plan_estimate(model, prompt, completion, plan.to(prompt.device), mask_token_id)


def mask_size_sums(model: torch.nn.Module, prompt: torch.Tensor, completion: torch.Tensor,
                   mask_token_id: int) -> torch.Tensor:
    """a_l for l = 1..L: the sum over all masks of size l of sum_{i in m} log p, shape (B, L)."""
    batch, length = completion.shape
    if length > MAX_EXACT_LENGTH:
        raise ValueError(f"exact enumeration takes at most {MAX_EXACT_LENGTH} tokens, got {length}")
    subsets = [s for size in range(1, length + 1) for s in combinations(range(length), size)]
    masks = torch.zeros(len(subsets), length, dtype=torch.bool)
    for row, subset in enumerate(subsets):
        masks[row, list(subset)] = True
    masks = masks.unsqueeze(1).expand(-1, batch, -1).to(prompt.device)
    plan = MaskPlan(masks, torch.ones(masks.shape[:2], device=prompt.device))
    with torch.no_grad():
        per_mask = (masked_token_logps(model, prompt, completion, plan, mask_token_id) * masks).sum(-1)
    sizes = masks[:, 0].sum(-1) - 1
    sums = torch.zeros(length, batch, dtype=per_mask.dtype, device=prompt.device)
    return sums.index_add_(0, sizes, per_mask).T


def exact_elbo_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """Exact ELBO sum_l a_l / (l C(L, l)) from mask_size_sums, shape (B,)."""
    length = sums.shape[1]
    scale = torch.tensor([1.0 / (size * math.comb(length, size)) for size in range(1, length + 1)],
                         dtype=sums.dtype, device=sums.device)
    return (sums * scale).sum(-1)


def elbo_integrand_from_sums(sums: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """g(t) = E_{m~Bernoulli(t)}[(1/t) sum_{i in m} log p] at each time, shape (B, T)."""
    length = sums.shape[1]
    sizes = torch.arange(1, length + 1, dtype=sums.dtype, device=sums.device)
    times = times.to(sums).view(-1, 1)
    basis = times ** (sizes - 1) * (1 - times) ** (length - sizes)
    return sums @ basis.T


def exact_elbo(model: torch.nn.Module, prompt: torch.Tensor, completion: torch.Tensor,
               mask_token_id: int) -> torch.Tensor:
    """The exact ELBO by enumerating all 2^L - 1 masks (L <= MAX_EXACT_LENGTH), shape (B,)."""
    return exact_elbo_from_sums(mask_size_sums(model, prompt, completion, mask_token_id))

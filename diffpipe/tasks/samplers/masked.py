"""Discrete samplers' shared parts: the masked CTMC sampler over lattice sites and the WDCE loss.

Reference: all sites start masked and each unmasks to a uniform state (memoryless, terminal law uniform).
The sampler fills one site per step in a uniformly random order from the network's conditional
p_theta(x_d | unmasked sites); the order probabilities cancel, so
log w = log pi~(x) - sum_d log p_theta(x_{sigma_d} | x_{sigma_<d}) and E[w] = Z.
"""

from __future__ import annotations

import torch


def site_log_probs(model: torch.nn.Module, tokens: torch.Tensor, states: int) -> torch.Tensor:
    """log p_theta over the real states at every site (B, sites, q); the mask token (id q) is dropped."""
    return torch.log_softmax(model(tokens)[..., :states].float(), dim=-1)


def masked_rollout(model: torch.nn.Module, n: int, sites: int, states: int, gen: torch.Generator,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """n configurations (n, sites) on the CPU and the log probability the sampler gave each (float64)."""
    x = torch.full((n, sites), states, dtype=torch.long)
    order = torch.rand(n, sites, generator=gen).argsort(dim=1)
    rows = torch.arange(n)
    log_q = torch.zeros(n, dtype=torch.float64)
    for d in range(sites):
        pos = order[:, d]
        logp = site_log_probs(model, x.to(device), states)[rows.to(device), pos.to(device)].cpu()
        token = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(1)
        log_q += logp[rows, token].double()
        x[rows, pos] = token
    return x, log_q


def wdce_loss(model: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor, replicates: int, states: int,
              gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Weighted denoising cross-entropy: each sample is re-masked `replicates` times with a ratio
    lambda ~ U(0, 1); the masked sites' log-likelihood, times min(1/lambda, 1e5), weighted by `weights`."""
    xr = x.repeat_interleave(replicates, 0)
    wr = weights.repeat_interleave(replicates).float() / replicates
    lam = torch.rand(len(xr), 1, generator=gen)
    masked = torch.rand(xr.shape, generator=gen) < lam
    tokens = torch.where(masked, torch.full_like(xr, states), xr)
    logp = site_log_probs(model, tokens.to(device), states)
    ll = logp.gather(-1, xr.to(device)[..., None]).squeeze(-1)
    per_sample = (ll * masked.to(device)).sum(-1) * (1 / lam.squeeze(1)).clamp(max=1e5).to(device)
    return -(wr.to(device) * per_sample).sum()

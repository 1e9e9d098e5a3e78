"""Feynman-Kac steering: particles per condition, resampled by reward potentials of their x0 predictions.

At each resampling time the particles of a condition carry log-weights from the chosen potential
(`difference`: lambda (r_s - r_prev), accumulated since the last resampling, so the product over the
trajectory is exp(lambda r(x0)) up to a constant; `max`: lambda max of the particle's rewards so far;
`immediate`: lambda r_s). When the effective sample size (sum w)^2 / sum w^2 falls below the threshold
(or always, without one), particles are redrawn multinomially within their condition. The returned
sample of a condition is its highest-reward particle at t = 0.
"""

from __future__ import annotations

import torch

from diffpipe.schemas.search import FKSteering

from ..registry import search
from .particles import ContinuousProblem, SearchResult, best_per_condition


def resampling_steps(spec: FKSteering, steps: int) -> set[int]:
    """Step indices (after the step) at which particles may be resampled; never after the last step."""
    end = steps - 1 if spec.resample_end is None else min(spec.resample_end, steps - 1)
    return set(range(spec.resample_start + spec.resample_every - 1, end, spec.resample_every))


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """ESS of each row of log-weights (conditions, particles)."""
    w = torch.softmax(log_w, dim=1)
    return 1.0 / (w**2).sum(1)


def resample(log_w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flat row indices of the particles drawn with probability proportional to exp(log_w), per condition."""
    n, k = log_w.shape
    draws = torch.multinomial(torch.softmax(log_w.float().cpu(), 1), k, replacement=True, generator=gen)
    return (draws + torch.arange(n)[:, None] * k).flatten().to(log_w.device)


@search("fk_steering")
def fk_steering(spec: FKSteering, problem: ContinuousProblem) -> SearchResult:
    """Steer `particles` SDE trajectories per condition with reward potentials."""
    n, k, lam = problem.n, spec.particles, spec.strength
    cond = problem.repeated(k)
    x = problem.noise(n * k)
    previous = torch.zeros(n * k, device=problem.device)
    best_so_far = torch.full((n * k,), -torch.inf, device=problem.device)
    log_w = torch.zeros(n, k, device=problem.device)
    when, resamples, checks = resampling_steps(spec, problem.steps), 0, 0
    for i in range(problem.steps):
        x, x0_hat = problem.step(x, torch.full((n * k,), i), cond, spec.noise_level)
        if i not in when:
            continue
        r = problem.reward(x0_hat, cond)
        best_so_far = torch.maximum(best_so_far, r)
        if spec.potential == "difference":
            log_w = log_w + lam * (r - previous).reshape(n, k)
        else:
            log_w = lam * (best_so_far if spec.potential == "max" else r).reshape(n, k)
        previous, checks = r, checks + 1
        due = torch.ones(n, dtype=torch.bool, device=problem.device) if spec.ess_threshold is None else \
            effective_sample_size(log_w) < spec.ess_threshold * k
        if not due.any():
            continue
        keep = torch.arange(n * k, device=problem.device).reshape(n, k)
        drawn = resample(log_w, problem.gen).reshape(n, k)
        index = torch.where(due[:, None], drawn, keep).flatten()
        x, previous, best_so_far = x[index], previous[index], best_so_far[index]
        log_w = torch.where(due[:, None], torch.zeros_like(log_w), log_w)
        resamples += int(due.sum())
    rewards = problem.reward(x, cond)
    best, best_rewards = best_per_condition(x, rewards, k)
    stats = {"resampling_events_per_condition": resamples / n, "potential_evaluations": checks,
             "reward_of_all_particles": float(rewards.mean())}
    return SearchResult(best, best_rewards, problem.evaluations, stats)

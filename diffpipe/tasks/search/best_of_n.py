"""Best-of-N: N independent trajectories per condition, the highest-reward one kept (the equal-NFE baseline)."""

from __future__ import annotations

from diffpipe.schemas.search import BestOfN

from ..registry import search
from .particles import ContinuousProblem, SearchResult, best_per_condition


@search("best_of_n")
def best_of_n(spec: BestOfN, problem: ContinuousProblem) -> SearchResult:
    """Run `particles` trajectories per condition and keep each condition's best by reward."""
    k = spec.particles
    cond = problem.repeated(k)
    x = problem.rollout(problem.noise(problem.n * k), 0, cond, spec.noise_level)
    rewards = problem.reward(x, cond)
    best, best_rewards = best_per_condition(x, rewards, k)
    return SearchResult(best, best_rewards, problem.evaluations, {"reward_of_all_particles": float(rewards.mean())})

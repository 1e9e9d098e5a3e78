"""Best-of-N: N independent samples per condition, the highest-reward one kept (the equal-NFE baseline).

Continuous data: N trajectories of the Euler ODE (or the SDE with `noise_level`) from N noises. Masked
token models: N completions with tokens drawn at `temperature` by the block sampler.
"""

from __future__ import annotations

from diffpipe.schemas.search import BestOfN

from ..registry import search
from .masked import MaskedProblem
from .particles import ContinuousProblem, SearchResult, best_per_condition


@search("best_of_n")
def best_of_n(spec: BestOfN, problem: ContinuousProblem | MaskedProblem) -> SearchResult:
    """Draw `particles` samples per condition and keep each condition's best by reward."""
    k = spec.particles
    if isinstance(problem, MaskedProblem):
        cond = problem.prompts.repeat_interleave(k, 0)
        x = problem.complete(problem.model, cond, spec.temperature)
    else:
        cond = problem.repeated(k)
        x = problem.rollout(problem.noise(problem.n * k), 0, cond, spec.noise_level)
    rewards = problem.reward(x, cond)
    best, best_rewards = best_per_condition(x, rewards, k)
    return SearchResult(best, best_rewards, problem.evaluations, {"reward_of_all_particles": float(rewards.mean())})

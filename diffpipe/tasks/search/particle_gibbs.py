"""Particle Gibbs for masked diffusion (PG-DDM): conditional SMC over whole denoising trajectories.

Target: p(completion | prompt) exp(lambda r(prompt, completion)). One iteration is a sequential Monte
Carlo sweep over the block sampler's steps with `particles` stochastic trajectories per prompt. Before
each step every particle's partial state is scored by the reward of its one-step completion (masked
positions filled with the model's most likely tokens, from the logits that step computes anyway); the
log-weights add lambda (r_now - r_before), so their product over a sweep telescopes to exp(lambda r) of
the finished completion; then the particles are resampled multinomially by those weights and advanced
one step. From the second sweep on it is *conditional* SMC: particle 0 of every prompt is the reference
trajectory kept from the previous sweep, never resampled away and forced back onto its stored states,
while the others draw ancestors among all particles, the reference included. After a sweep the next
reference is drawn from the final weights; the last one is the returned completion.
Cost: particles x iterations x steps network evaluations per prompt.
"""

from __future__ import annotations

import torch

from diffpipe.schemas.search import ParticleGibbs

from ..registry import search
from .masked import MaskedProblem
from .particles import SearchResult


def ancestors(log_w: torch.Tensor, conditional: bool, gen: torch.Generator) -> torch.Tensor:
    """Flat row indices after multinomial resampling per prompt; with `conditional`, slot 0 keeps itself."""
    n, k = log_w.shape
    draws = torch.multinomial(torch.softmax(log_w.float().cpu(), 1), k, replacement=True, generator=gen)
    if conditional:
        draws[:, 0] = 0
    return (draws + torch.arange(n)[:, None] * k).flatten().to(log_w.device)


def sweep(spec: ParticleGibbs, problem: MaskedProblem, prompts: torch.Tensor,
          reference: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (conditional) SMC sweep; returns trajectories (steps + 1, N k, L), final log-weights (N, k), rewards."""
    n, k, lam = problem.n, spec.particles, spec.strength
    completion = problem.masked(n * k)
    history = [completion]
    log_w = torch.zeros(n, k, device=prompts.device)
    before = torch.zeros(n * k, device=prompts.device)
    rows = torch.arange(n, device=prompts.device) * k
    for s, place in enumerate(problem.schedule()):
        logits = problem.completion_logits(problem.model, prompts, completion)
        now = problem.reward(problem.one_step_completion(completion, logits), prompts)
        log_w, before = log_w + lam * (now - before).reshape(n, k), now
        index = ancestors(log_w, reference is not None, problem.gen)
        completion, logits, before = completion[index], logits[index], before[index]
        history = [h[index] for h in history]
        log_w = torch.zeros_like(log_w)
        completion = problem.advance(completion, logits, place, spec.temperature)
        if reference is not None:
            completion[rows] = reference[s + 1]
        history.append(completion)
    final = problem.reward(completion, prompts)
    log_w = log_w + lam * (final - before).reshape(n, k)
    return torch.stack(history), log_w, final


@search("particle_gibbs")
def particle_gibbs(spec: ParticleGibbs, problem: MaskedProblem) -> SearchResult:
    """`iterations` conditional SMC sweeps per prompt; returns the last sweep's drawn reference."""
    n, k = problem.n, spec.particles
    prompts = problem.prompts.repeat_interleave(k, 0)
    reference, first_sweep_reward = None, None
    for _ in range(spec.iterations):
        history, log_w, rewards = sweep(spec, problem, prompts, reference)
        first_sweep_reward = float(rewards.mean()) if first_sweep_reward is None else first_sweep_reward
        pick = torch.multinomial(torch.softmax(log_w.float().cpu(), 1), 1, generator=problem.gen).flatten()
        chosen = (pick + torch.arange(n) * k).to(history.device)
        reference = history[:, chosen]
    chosen_rewards = rewards[chosen]
    stats = {"reward_of_all_particles_first_sweep": first_sweep_reward,
             "reward_of_all_particles_last_sweep": float(rewards.mean())}
    return SearchResult(reference[-1], chosen_rewards, problem.evaluations, stats)

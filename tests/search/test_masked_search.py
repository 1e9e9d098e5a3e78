"""Masked-diffusion search: particle Gibbs keeps its reference, RFG and CFG reduce to plain decoding exactly."""

from __future__ import annotations

import math

import pytest
import torch

from diffpipe.schemas.search import BestOfN, DiscreteCFG, ParticleGibbs, RewardFreeGuidance
from diffpipe.tasks.mdlm import sample_completions
from diffpipe.tasks.nets.mdlm import MaskedDiffusionTransformer
from diffpipe.tasks.sampling import CountingNet
from diffpipe.tasks.search.best_of_n import best_of_n
from diffpipe.tasks.search.discrete_cfg import discrete_cfg, guidance_weight
from diffpipe.tasks.search.masked import MaskedProblem
from diffpipe.tasks.search.particle_gibbs import ancestors, particle_gibbs, sweep
from diffpipe.tasks.search.rfg import rfg

VOCAB, MASK, PROMPT, LENGTH, STEPS, BLOCK = 12, 1, 5, 6, 6, 3


def model(seed: int) -> MaskedDiffusionTransformer:
    torch.manual_seed(seed)
    return MaskedDiffusionTransformer(VOCAB, PROMPT + LENGTH, MASK, d_model=16, num_layers=1, num_heads=2).eval()


def ones(completions: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Reward: the share of completion tokens equal to 3."""
    return (completions == 3).float().mean(1)


def problem(policy, reference=None, seed: int = 0) -> MaskedProblem:
    prompts = torch.randint(3, VOCAB, (4, PROMPT), generator=torch.Generator().manual_seed(1))
    return MaskedProblem(policy, prompts, LENGTH, STEPS, BLOCK, MASK, ones, torch.Generator().manual_seed(seed),
                         reference)


def greedy(net, p: MaskedProblem) -> torch.Tensor:
    return sample_completions(net, p.prompts, LENGTH, MASK, steps=STEPS, block_length=BLOCK)


@torch.no_grad()
def test_rfg_at_weight_zero_or_against_itself_is_the_policy_and_costs_two_passes_per_step() -> None:
    policy, other = CountingNet(model(0)), CountingNet(model(1))
    plain = greedy(policy, problem(policy))
    p = problem(policy, other)
    result = rfg(RewardFreeGuidance(reference="pretrain", weight=0.0), p)
    assert torch.equal(result.x, plain) and result.evaluations == 2 * STEPS * 4
    assert torch.equal(rfg(RewardFreeGuidance(reference="x", weight=3.0), problem(policy, policy)).x, plain)
    assert not torch.equal(rfg(RewardFreeGuidance(reference="x", weight=3.0), problem(policy, other)).x, plain)


@torch.no_grad()
def test_cfg_at_weight_zero_is_conditional_decoding_and_the_smooth_schedule_starts_at_zero() -> None:
    net = CountingNet(model(0))
    plain = greedy(net, problem(net))
    for schedule in ("constant", "smooth"):
        result = discrete_cfg(DiscreteCFG(weight=0.0, schedule=schedule), problem(net))
        assert torch.equal(result.x, plain) and result.evaluations == 2 * STEPS * 4
    progress = torch.tensor([0.0, 0.5, 1.0])
    assert guidance_weight(DiscreteCFG(weight=2.0, schedule="smooth"), progress).tolist() == pytest.approx(
        [0.0, 1.0, 2.0])
    assert guidance_weight(DiscreteCFG(weight=2.0, schedule="constant"), progress).tolist() == [2.0] * 3


def test_conditional_resampling_keeps_the_reference_slot() -> None:
    log_w = torch.tensor([[-math.inf, 0.0, -math.inf], [0.0, -math.inf, -math.inf]])
    assert ancestors(log_w, True, torch.Generator().manual_seed(0)).tolist() == [0, 1, 1, 3, 3, 3]
    assert ancestors(log_w, False, torch.Generator().manual_seed(0)).tolist() == [1, 1, 1, 3, 3, 3]


@torch.no_grad()
def test_conditional_sweep_reproduces_the_reference_trajectory_and_budget_is_particles_iterations_steps() -> None:
    net = CountingNet(model(0))
    spec = ParticleGibbs(reward="exact_verifier", particles=3, iterations=2, strength=2.0)
    p = problem(net)
    prompts = p.prompts.repeat_interleave(3, 0)
    history, _, _ = sweep(spec, p, prompts, None)
    reference = history[:, torch.arange(4) * 3 + 2]
    again, _, _ = sweep(spec, p, prompts, reference)
    assert torch.equal(again[:, torch.arange(4) * 3], reference)
    assert (history[-1] != MASK).all() and (history[0] == MASK).all()
    result = particle_gibbs(spec, problem(net))
    assert result.evaluations == 3 * 2 * STEPS * 4
    torch.testing.assert_close(result.rewards, ones(result.x, None))


@torch.no_grad()
def test_masked_best_of_n_draws_distinct_completions_and_keeps_the_best() -> None:
    net = CountingNet(model(0))
    result = best_of_n(BestOfN(reward="exact_verifier", particles=4, temperature=1.0), problem(net))
    assert result.evaluations == 4 * STEPS * 4 and result.x.shape == (4, LENGTH)
    assert result.rewards.mean() >= result.stats["reward_of_all_particles"]

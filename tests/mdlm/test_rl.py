"""Discrete RL algorithms: gradient sign on a toy group, forward counts and one rollout batch each through the
`rl` stage's per-step work."""

import copy

import pytest
import torch
from mdlm_helpers import rl_rollout_batch, tiny_model
from pydantic import TypeAdapter

from diffpipe.schemas.rl_discrete import DISCRETE_ALGORITHMS, DiscreteAlgorithmSpec
from diffpipe.tasks.data.reasoning import EOS, MASK
from diffpipe.tasks.mdlm import exact_elbo
from diffpipe.tasks.rl.discrete import Rollouts, group_advantages, make_algorithm
from diffpipe.tasks.rl.discrete.stage import summary_metrics
from diffpipe.tasks.rl.discrete.tr2d2 import SearchRollouts

ALGORITHMS = sorted(cls.model_fields["algorithm"].default for cls in DISCRETE_ALGORITHMS)


def algorithm_spec(name: str, **options):
    """The algorithm's schema object with its reference defaults, some overridden."""
    return TypeAdapter(DiscreteAlgorithmSpec).validate_python({"algorithm": name, **options})

LENGTH = 4


def toy_rollouts(group_size: int) -> Rollouts:
    """One prompt, G distinct completions, only the first rewarded."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 21, (1, 3), generator=generator).repeat(group_size, 1)
    completion = torch.stack([torch.randperm(18, generator=generator)[:LENGTH] + 3 for _ in range(group_size)])
    rewards = torch.zeros(group_size)
    rewards[0] = 1.0
    return Rollouts(prompt, completion, rewards, rewards > 0, group_size)


def toy_batch(algorithm: str, group_size: int) -> Rollouts:
    """The toy group; TR2-D2 takes search rollouts, here with a zero path term so log RND = r / alpha."""
    batch = toy_rollouts(group_size)
    if algorithm != "tr2d2":
        return batch
    return SearchRollouts(batch.prompt, batch.completion, batch.rewards, batch.correct, group_size,
                          batch.rewards.double())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_loss_raises_the_rewarded_completion(algorithm):
    """A few gradient steps on one group: the exact ELBO of the reward-1 completion rises against the others."""
    model = tiny_model(seed=3, d_model=32)
    ref = copy.deepcopy(model).requires_grad_(False)
    spec = algorithm_spec(algorithm, num_iterations=4)
    algo = make_algorithm(spec, MASK, EOS)
    batch = toy_batch(algorithm, 4)

    def margin() -> float:
        elbo = exact_elbo(model, batch.prompt, batch.completion, MASK)
        return float(elbo[0] - elbo[1:].mean())

    before = margin()
    generator = torch.Generator().manual_seed(1)
    prepared = algo.prepare(model, ref, batch, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for iteration in range(spec.num_iterations):
        optimizer.zero_grad()
        loss, _ = algo.loss(model, batch, prepared, iteration)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    assert margin() > before + 1e-3


def test_zero_variance_groups_give_no_gradient():
    batch = toy_rollouts(4)
    flat = Rollouts(batch.prompt, batch.completion, torch.ones(4), torch.ones(4, dtype=torch.bool), 4)
    model = tiny_model(seed=4)
    for algorithm in ("espo", "dmpo", "wd1"):
        algo = make_algorithm(algorithm_spec(algorithm, num_iterations=1), MASK, EOS)
        prepared = algo.prepare(model, copy.deepcopy(model), flat, torch.Generator().manual_seed(0))
        assert float(prepared.signal.abs().max()) < 1e-6, algorithm


def test_advantages_follow_each_reference():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    plain = group_advantages(rewards, 3, leave_one_out=False, scale=False)
    assert torch.allclose(plain[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3]))
    assert torch.allclose(group_advantages(rewards, 3, leave_one_out=True, scale=False), plain * 1.5)


EXPECTED_FORWARDS = {  # (no-grad scoring, with-grad) sequence forwards per rollout at mu = 2
    "diffu_grpo": (4, 2), "coupled_grpo": (12, 6), "espo": (16, 8), "gdpo": (12, 6), "dmpo": (8, 8), "wd1": (0, 2),
    # sdpo: the reference's log p(x0 | x_t) once per iteration; tr2d2: none (its log RND is summed while
    # searching, see SAMPLING_FORWARDS), and 16 WDCE replicates per iteration
    "sdpo": (2, 2), "tr2d2": (0, 32),
}
SEARCH = {"mcts_iterations": 2, "num_children": 2}
"""tr2d2 at a budget of 4 reward evaluations per prompt (the other algorithms' group_size)."""
SAMPLING_FORWARDS = {"tr2d2": 10}
"""Rows through the networks per rollout while sampling (others: one per decoding step, 6). tr2d2 expands
the root (1 row) and completes 2 children over 5 steps, then expands a depth-1 child (1) and completes 2
over 4 steps: (1 + 10 + 1 + 8) / 4 rollouts = 5 rows, each through the policy and through the pretrained
model (whose per-step log-probabilities make the path's log RND): 10."""


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rollout_batch_of_the_stage_counts_forwards(algorithm):
    model = tiny_model(seed=5, max_length=10)
    options = {"algorithm": algorithm, "num_iterations": 2, "block_length": 3,
               **(SEARCH if algorithm == "tr2d2" else {})}
    before = [p.detach().clone() for p in model.parameters()]

    def reward_fn(prompts: torch.Tensor, completions: torch.Tensor):
        rewards = (completions % 2 == 0).float().mean(dim=1)
        return rewards, rewards > 0.5

    state, losses = rl_rollout_batch(model, options, torch.randint(3, 21, (2, 4)), reward_fn, completion_length=6)
    stats = summary_metrics(state)
    assert stats["rollout_batches"] == 1 and stats["samples_generated"] == 8 and len(losses) == 2
    forwards = stats["forwards_per_rollout"]
    assert forwards["sampling"] == SAMPLING_FORWARDS.get(algorithm, 6)
    assert (forwards["scoring"], forwards["grad"]) == EXPECTED_FORWARDS[algorithm]
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert changed == (stats["zero_std_ratio"] < 1.0)

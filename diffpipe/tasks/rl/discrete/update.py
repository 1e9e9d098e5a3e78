"""One RL update of a masked-diffusion LM outside a pipeline: rollout, reward, prepare, mu gradient steps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from diffpipe.schemas.rl_discrete import DiscreteAlgorithmBase
from diffpipe.tasks.registry import get_implementation

from .base import DiscreteAlgorithm
from .core import RewardFn, zero_std_ratio


@contextmanager
def count_forwards(*models: torch.nn.Module) -> Iterator[dict[str, int]]:
    """Count sequence-forwards (rows) through the models, split into 'grad' and 'no_grad'."""
    counts = {"grad": 0, "no_grad": 0}

    def hook(_module: torch.nn.Module, args: tuple) -> None:
        counts["grad" if torch.is_grad_enabled() else "no_grad"] += int(args[0].shape[0])

    handles = [m.register_forward_pre_hook(hook) for m in {id(m): m for m in models}.values()]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def make_algorithm(spec: DiscreteAlgorithmBase, mask_token_id: int, eos_token_id: int) -> DiscreteAlgorithm:
    """The registered algorithm of `spec.algorithm`, built from its schema object."""
    return get_implementation("algorithm", spec.algorithm)(spec, mask_token_id, eos_token_id)


def rl_update(model: torch.nn.Module, ref_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              prompts: torch.Tensor, spec: DiscreteAlgorithmBase, generator: torch.Generator | None, *,
              group_size: int, reward_fn: RewardFn, completion_length: int, eos_token_id: int,
              max_grad_norm: float = 0.2) -> dict[str, float]:
    """Rollout a batch of prompts, then `num_iterations` gradient steps of the algorithm; statistics.

    `max_grad_norm` 0.2 is what d1, ESPO, DMPO and DiffuCoder clip to.
    """
    algo = make_algorithm(spec, model.config.mask_token_id, eos_token_id)
    ref_model.eval()
    started = time.perf_counter()
    with count_forwards(model, ref_model) as counts:
        batch = algo.collect(model, ref_model, prompts, reward_fn, group_size, completion_length, generator)
        sampling_forwards = counts["no_grad"]
        prepared = algo.prepare(model, ref_model, batch, generator)
        rollout_seconds = time.perf_counter() - started
        losses, stats = [], {}
        for iteration in range(spec.num_iterations):
            optimizer.zero_grad(set_to_none=True)
            loss, stats = algo.loss(model, batch, prepared, iteration)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    rows = batch.completion.shape[0]
    return {
        "reward_mean": float(batch.rewards.mean()), "accuracy": float(batch.correct.float().mean()),
        "zero_std_ratio": zero_std_ratio(batch.rewards, group_size),
        "loss": sum(losses) / len(losses),
        "grad_norm": float(grad_norm), "rollouts": rows,
        "sampling_forwards_per_rollout": sampling_forwards / rows,
        "scoring_forwards_per_rollout": (counts["no_grad"] - sampling_forwards) / rows,
        "grad_forwards_per_rollout": counts["grad"] / rows,
        "rollout_seconds": rollout_seconds, "seconds": time.perf_counter() - started, **stats,
    }

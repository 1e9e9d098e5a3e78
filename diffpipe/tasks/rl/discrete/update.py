"""One RL update of a masked-diffusion LM: rollout, reward, prepare, mu gradient steps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch

from diffpipe.tasks.mdlm.sampler import sample_completions

from .algorithms import ALGORITHMS
from .core import RewardFn, Rollouts, zero_std_ratio
from .options import OPTIONS, CommonOptions


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


def make_options(algorithm: str, **overrides: object) -> CommonOptions:
    """The algorithm's options with the reference defaults, some overridden by keyword."""
    if algorithm not in OPTIONS:
        raise ValueError(f"unknown RL algorithm {algorithm!r}; expected one of {sorted(OPTIONS)}")
    return replace(OPTIONS[algorithm](), **overrides)


@torch.no_grad()
def rollout(model: torch.nn.Module, prompts: torch.Tensor, reward_fn: RewardFn, options: CommonOptions,
            completion_length: int, generator: torch.Generator | None) -> Rollouts:
    """Sample G completions per prompt with the block low-confidence sampler and score them."""
    repeated = prompts.repeat_interleave(options.group_size, dim=0)
    completion = sample_completions(model, repeated, completion_length, model.config.mask_token_id,
                                    steps=options.steps or completion_length,
                                    block_length=options.block_length, temperature=options.temperature,
                                    generator=generator)
    rewards, correct = reward_fn(repeated, completion)
    rewards = rewards.to(device=prompts.device, dtype=torch.float32)
    return Rollouts(repeated, completion, rewards, correct, options.group_size)


def rl_update(model: torch.nn.Module, ref_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              prompts: torch.Tensor, algorithm: str, options: CommonOptions | None,
              generator: torch.Generator | None, *, reward_fn: RewardFn, completion_length: int,
              eos_token_id: int) -> dict[str, float]:
    """Rollout a batch of prompts, then `num_iterations` gradient steps of the algorithm; statistics."""
    options = options or make_options(algorithm)
    algo = ALGORITHMS[algorithm](options, model.config.mask_token_id, eos_token_id)
    ref_model.eval()
    started = time.perf_counter()
    with count_forwards(model, ref_model) as counts:
        batch = rollout(model, prompts, reward_fn, options, completion_length, generator)
        sampling_forwards = counts["no_grad"]
        prepared = algo.prepare(model, ref_model, batch, generator)
        rollout_seconds = time.perf_counter() - started
        losses, stats = [], {}
        for iteration in range(options.num_iterations):
            optimizer.zero_grad(set_to_none=True)
            loss, stats = algo.loss(model, batch, prepared, iteration)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    rows = batch.completion.shape[0]
    return {
        "reward_mean": float(batch.rewards.mean()), "accuracy": float(batch.correct.float().mean()),
        "zero_std_ratio": zero_std_ratio(batch.rewards, options.group_size),
        "loss": sum(losses) / len(losses),
        "grad_norm": float(grad_norm), "rollouts": rows,
        "sampling_forwards_per_rollout": sampling_forwards / rows,
        "scoring_forwards_per_rollout": (counts["no_grad"] - sampling_forwards) / rows,
        "grad_forwards_per_rollout": counts["grad"] / rows,
        "rollout_seconds": rollout_seconds, "seconds": time.perf_counter() - started, **stats,
    }

"""Low-confidence remasking with semi-autoregressive blocks (LLaDA), on diffusers' BlockRefinementScheduler.

The scheduler commits, at each step, the most confident of the still-masked tokens of the current block,
with LLaDA's even split of the block over its steps; its confidence-threshold shortcut is switched off
(threshold above 1) so exactly the scheduled number of tokens is committed per step.
"""

from __future__ import annotations

import math

import torch
from diffusers import BlockRefinementScheduler

NO_THRESHOLD = 2.0


def block_schedule(length: int, steps: int, block_length: int | None) -> list[tuple[int, int, int]]:
    """(start, end, steps) of each block; the steps are split evenly over the blocks as in LLaDA."""
    block_length = length if block_length is None else block_length
    num_blocks = math.ceil(length / block_length)
    if steps < num_blocks or steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the block count ({num_blocks})")
    return [(start, min(start + block_length, length), steps // num_blocks)
            for start in range(0, length, block_length)]


@torch.no_grad()
def sample_completions(model: torch.nn.Module, prompt: torch.Tensor, completion_length: int,
                       mask_token_id: int, *, steps: int, block_length: int | None = None,
                       temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Completions (B, completion_length) for prompts (B, P): blocks left to right, confident tokens first."""
    prompt_len = prompt.shape[1]
    completion = torch.full((prompt.shape[0], completion_length), mask_token_id, dtype=prompt.dtype,
                            device=prompt.device)
    scheduler = BlockRefinementScheduler(threshold=NO_THRESHOLD)
    for start, end, block_steps in block_schedule(completion_length, steps, block_length):
        scheduler.set_timesteps(block_steps, device=prompt.device, block_length=end - start)
        for step in range(block_steps):
            logits = model(torch.cat([prompt, completion], dim=1))[:, prompt_len + start:prompt_len + end]
            out = scheduler.step(logits.float(), step, completion[:, start:end], mask_token_id=mask_token_id,
                                 temperature=temperature, generator=generator)
            completion[:, start:end] = out.prev_sample
    return completion

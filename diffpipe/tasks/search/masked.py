"""What the masked-diffusion search methods share: the batch of prompts and the block sampler with particles.

The sampler is the reasoning domains' (tasks/mdlm/sampler.py): semi-autoregressive blocks of
`block_length` tokens, each committed over its share of the steps by diffusers' BlockRefinementScheduler,
most confident first. With temperature > 0 the committed tokens are drawn (stochastic trajectories for
particles); with 0 they are the argmax (greedy, as the plain sample stage). `logits_of` may be the model
or a guided combination of models (RFG, CFG): it maps full sequences (prompt + completion) to logits.
The models arrive wrapped in CountingNet, whose counts give the batch's network evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers import BlockRefinementScheduler

from ..mdlm import block_schedule
from ..mdlm.sampler import NO_THRESHOLD

if TYPE_CHECKING:
    from .run import SearchRun

Logits = Callable[[torch.Tensor], torch.Tensor]
"""Token ids (N, P + L) -> logits (N, P + L, V)."""


@dataclass
class MaskedProblem:
    """One batch of prompts to complete with `steps` block-sampler steps, a reward and the models."""

    model: Logits
    prompts: torch.Tensor
    length: int
    steps: int
    block_length: int
    mask_token_id: int
    reward_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    gen: torch.Generator
    reference: Logits | None = None
    """The reference model (RFG)."""
    counted_before: int = 0

    def __post_init__(self) -> None:
        self.counted_before = self.counted()

    def counted(self) -> int:
        """Sequences the models (CountingNet-wrapped) have evaluated so far."""
        return sum(getattr(m, "rows", 0) for m in (self.model, self.reference) if m is not None)

    @property
    def evaluations(self) -> int:
        """Network evaluations (one sequence through one model) spent on this batch."""
        return self.counted() - self.counted_before

    @property
    def n(self) -> int:
        """Prompts in the batch."""
        return self.prompts.shape[0]

    def masked(self, rows: int) -> torch.Tensor:
        """Fully masked completions for `rows` sequences."""
        return torch.full((rows, self.length), self.mask_token_id, dtype=self.prompts.dtype,
                          device=self.prompts.device)

    def completion_logits(self, logits_of: Logits, prompts: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        """Logits (N, L, V) of the completion positions under `logits_of`."""
        return logits_of(torch.cat([prompts, completion], dim=1))[:, prompts.shape[1]:].float()

    def schedule(self) -> Iterator[tuple[int, int, int, BlockRefinementScheduler]]:
        """(block start, block end, step within the block, its scheduler) for every step, in order."""
        scheduler = BlockRefinementScheduler(threshold=NO_THRESHOLD)
        device = self.prompts.device
        for start, end, block_steps in block_schedule(self.length, self.steps, self.block_length):
            scheduler.set_timesteps(block_steps, device=device, block_length=end - start)
            for step in range(block_steps):
                yield start, end, step, scheduler

    def advance(self, completion: torch.Tensor, logits: torch.Tensor, place: tuple[int, int, int, Any],
                temperature: float) -> torch.Tensor:
        """Completions after one scheduled step given their logits (N, L, V)."""
        start, end, step, scheduler = place
        out = scheduler.step(logits[:, start:end], step, completion[:, start:end], mask_token_id=self.mask_token_id,
                             temperature=temperature, generator=self.gen if temperature > 0 else None)
        completion = completion.clone()
        completion[:, start:end] = out.prev_sample
        return completion

    def complete(self, logits_of: Logits, prompts: torch.Tensor, temperature: float) -> torch.Tensor:
        """Completions of `prompts` under `logits_of` over the whole schedule."""
        completion = self.masked(prompts.shape[0])
        for place in self.schedule():
            completion = self.advance(completion, self.completion_logits(logits_of, prompts, completion), place,
                                      temperature)
        return completion

    def one_step_completion(self, completion: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Every still-masked position filled with its most likely token (the x0 prediction of a partial state)."""
        return torch.where(completion == self.mask_token_id, logits.argmax(-1), completion)

    def reward(self, completions: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Rewards of completions for their prompts, float32 on the prompts' device."""
        return self.reward_of(completions, prompts).float().to(self.prompts.device)


def complete(run: SearchRun, model: Logits, prompts: torch.Tensor, length: int, steps: int, block_length: int,
             mask_token_id: int, gen: torch.Generator) -> torch.Tensor:
    """Completions (N, length) of a batch of prompts, drawn by the run's search method."""
    return run.solve(MaskedProblem(model, prompts, length, steps, block_length, mask_token_id, run.reward_of(), gen,
                                   run.reference))

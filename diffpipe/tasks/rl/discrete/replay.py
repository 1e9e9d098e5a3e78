"""A replay buffer of the best distinct completions found per prompt, kept across searches and checkpoints.

Each prompt's buffer holds at most `capacity` distinct completions with their reward, exact-match flag
and trajectory log Radon-Nikodym derivative (the importance weight of the search that found it). A
candidate is rejected when its reward or log RND is not finite or the completion is already there;
it is inserted while the buffer has room; otherwise it replaces the entry with the smallest
(reward, log RND) if its own pair is larger (the TR2-D2 reference's rule). The entries live in
registered buffers of this module, so the training loop saves them with every checkpoint and a
resumed run restores them exactly (order included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

Key = tuple[int, ...]


@dataclass
class Entry:
    """One buffered completion of a prompt."""

    completion: Key
    reward: float
    log_rnd: float
    correct: bool

    @property
    def rank(self) -> tuple[float, float]:
        """What replacement compares: reward first, then log RND."""
        return self.reward, self.log_rnd


@dataclass(frozen=True)
class BufferBatch:
    """The buffers of some prompts as padded rows (G = capacity per prompt), with which rows are entries."""

    prompt: torch.Tensor
    completion: torch.Tensor
    rewards: torch.Tensor
    correct: torch.Tensor
    log_rnd: torch.Tensor
    filled: torch.Tensor
    """True on rows that are buffer entries; padding rows repeat the prompt's first entry."""


class ReplayBuffer(nn.Module):
    """Top `capacity` distinct completions per prompt by (reward, log RND), checkpointed as tensors."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.entries: dict[Key, list[Entry]] = {}
        for name, dtype in (("prompts", torch.long), ("completions", torch.long), ("rewards", torch.float64),
                            ("log_rnds", torch.float64), ("corrects", torch.bool)):
            self.register_buffer(name, torch.zeros((0, 0) if name in ("prompts", "completions") else (0,),
                                                   dtype=dtype))

    def __len__(self) -> int:
        """Number of entries over all prompts."""
        return sum(len(v) for v in self.entries.values())

    def add(self, prompts: torch.Tensor, completions: torch.Tensor, rewards: torch.Tensor, log_rnd: torch.Tensor,
            correct: torch.Tensor) -> None:
        """Offer every row (prompt, completion, reward, log RND, correct) to its prompt's buffer."""
        for p, c, r, w, ok in zip(prompts.tolist(), completions.tolist(), rewards.tolist(), log_rnd.tolist(),
                                  correct.tolist(), strict=True):
            if math.isfinite(r) and math.isfinite(w):
                self.offer(tuple(p), Entry(tuple(c), float(r), float(w), bool(ok)))
        self.sync()

    def offer(self, prompt: Key, candidate: Entry) -> None:
        """Insert, replace the weakest entry, or reject (duplicate or not better)."""
        buffer = self.entries.setdefault(prompt, [])
        if any(e.completion == candidate.completion for e in buffer):
            return
        if len(buffer) < self.capacity:
            buffer.append(candidate)
            return
        weakest = min(range(len(buffer)), key=lambda i: buffer[i].rank)
        if candidate.rank > buffer[weakest].rank:
            buffer[weakest] = candidate

    def forget(self, prompts: torch.Tensor) -> None:
        """Empty the buffers of these prompts."""
        for p in prompts.tolist():
            self.entries.pop(tuple(p), None)
        self.sync()

    def batch(self, prompts: torch.Tensor) -> BufferBatch:
        """The buffers of `prompts` (each must have an entry), `capacity` rows each, on the prompts' device."""
        rows: list[tuple[Key, Entry, bool]] = []
        for p in prompts.tolist():
            buffer = self.entries[tuple(p)]
            rows += [(tuple(p), e, True) for e in buffer]
            rows += [(tuple(p), buffer[0], False)] * (self.capacity - len(buffer))
        device = prompts.device
        return BufferBatch(
            torch.tensor([p for p, _, _ in rows], dtype=prompts.dtype, device=device),
            torch.tensor([e.completion for _, e, _ in rows], dtype=prompts.dtype, device=device),
            torch.tensor([e.reward for _, e, _ in rows], dtype=torch.float32, device=device),
            torch.tensor([e.correct for _, e, _ in rows], dtype=torch.bool, device=device),
            torch.tensor([e.log_rnd for _, e, _ in rows], dtype=torch.float64, device=device),
            torch.tensor([f for _, _, f in rows], dtype=torch.bool, device=device))

    def sync(self) -> None:
        """Write the entries into the registered buffers (what checkpoints save)."""
        flat = [(p, e) for p, buffer in self.entries.items() for e in buffer]
        if not flat:
            return
        self.prompts = torch.tensor([p for p, _ in flat], dtype=torch.long)
        self.completions = torch.tensor([e.completion for _, e in flat], dtype=torch.long)
        self.rewards = torch.tensor([e.reward for _, e in flat], dtype=torch.float64)
        self.log_rnds = torch.tensor([e.log_rnd for _, e in flat], dtype=torch.float64)
        self.corrects = torch.tensor([e.correct for _, e in flat], dtype=torch.bool)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        """Take the saved tensors whatever their sizes, then rebuild the entries from them."""
        for name in ("prompts", "completions", "rewards", "log_rnds", "corrects"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, state_dict[key].to(getattr(self, name).dtype).cpu().clone())
            elif strict:
                missing_keys.append(key)
        self.entries = {}
        for p, c, r, w, ok in zip(self.prompts.tolist(), self.completions.tolist(), self.rewards.tolist(),
                                  self.log_rnds.tolist(), self.corrects.tolist(), strict=True):
            self.entries.setdefault(tuple(p), []).append(Entry(tuple(c), r, w, bool(ok)))

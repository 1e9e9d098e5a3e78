"""Verifiable reasoning tasks for masked-diffusion LMs: the Countdown and Sudoku data sets, the `mdlm`
network and the `masked_diffusion` objective.

Lengths are in tokens of the character vocabulary (digits, + - * / ( ) = , and pad, mask, end).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import FieldError, Strict


class CountdownData(Strict):
    """Countdown: reach the target with each given number once and + - * /; exact rational verifier.

    Train and test never share a problem (the split is a hash of the sorted numbers and the target).
    """

    kind: Literal["countdown"] = "countdown"
    num_train: int = Field(default=1500, ge=1)
    """Distinct training problems."""
    num_test: int = Field(default=200, ge=1)
    """Distinct held-out problems."""
    num_numbers: list[int] = Field(default_factory=lambda: [3], min_length=1)
    """How many numbers a problem gives (each problem draws one of these; 3 and/or 4)."""
    max_number: int = Field(default=9, ge=2, le=99)
    """Largest given number (numbers are drawn from 1..max_number)."""
    max_target: int = Field(default=99, ge=1, le=9999)
    """Largest target (targets are drawn uniformly from the positive integers the numbers reach)."""
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Share of the problem space that belongs to the test split (by hash)."""
    seed: int = 0
    """Seed of the problem generator and of the solution chosen as each training completion."""

    @model_validator(mode="after")
    def _check_sizes(self) -> CountdownData:
        if any(n not in (3, 4) for n in self.num_numbers):
            raise ValueError(f"num_numbers: each entry must be 3 or 4; found {self.num_numbers}")
        if self.num_train + self.num_test > self.problem_space():
            raise FieldError("num_train", f"at most {self.problem_space()} distinct problems exist (multisets of "
                             f"{' or '.join(map(str, sorted(set(self.num_numbers))))} numbers from 1..{self.max_number}"
                             f", targets 1..{self.max_target}), fewer than num_train + num_test",
                             f"at most {max(0, self.problem_space() - self.num_test)}", str(self.num_train))
        return self

    def problem_space(self) -> int:
        """An upper bound on the distinct problems: number multisets times targets (not all targets are reachable)."""
        return sum(math.comb(self.max_number + k - 1, k) for k in set(self.num_numbers)) * self.max_target


class SudokuData(Strict):
    """4x4 Sudoku: fill the blanks (the puzzle has a unique solution); exact grid verifier.

    Test puzzles come from solution grids never used for training (the split is a hash of the grid).
    """

    kind: Literal["sudoku"] = "sudoku"
    num_train: int = Field(default=2000, ge=1)
    """Distinct training puzzles."""
    num_test: int = Field(default=200, ge=1)
    """Distinct held-out puzzles."""
    min_blanks: int = Field(default=6, ge=1, le=12)
    """Fewest blank cells of a puzzle."""
    max_blanks: int = Field(default=10, ge=1, le=12)
    """Most blank cells of a puzzle (puzzles whose solution would stop being unique are redrawn)."""
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Share of the 288 solution grids held out for the test split (by hash)."""
    seed: int = 0
    """Seed of the puzzle generator."""

    @model_validator(mode="after")
    def _check_blanks(self) -> SudokuData:
        if self.min_blanks > self.max_blanks:
            raise ValueError(f"min_blanks: must not exceed max_blanks ({self.max_blanks}); found {self.min_blanks}")
        return self


class MDLMSpec(Strict):
    """Bidirectional transformer over token ids (LLaDA style: no time input, never predicts the mask).

    The vocabulary and sequence length (prompt + completion) come from the data.
    """

    arch: Literal["mdlm"] = "mdlm"
    d_model: int = Field(default=64, ge=8)
    """Width of the token embeddings and of every layer."""
    num_layers: int = Field(default=3, ge=1)
    """Transformer encoder layers."""
    num_heads: int = Field(default=4, ge=1)
    """Attention heads per layer (must divide d_model)."""
    mlp_ratio: int = Field(default=4, ge=1)
    """Width of the MLP as a multiple of d_model."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout inside the encoder layers (rollouts and sampling run the network in eval mode)."""

    @model_validator(mode="after")
    def _check_heads(self) -> MDLMSpec:
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads: must divide d_model ({self.d_model}); found {self.num_heads}")
        return self


class MaskedDiffusion(Strict):
    """Masked (absorbing-state) diffusion: the 1/t-weighted cross-entropy on masked completion tokens.

    The prompt is never masked; t is stratified over the batch and the mask ratio is (1 - t_min) t + t_min.
    Sampling uses diffusers' `BlockRefinementScheduler` (low-confidence remasking, blocks left to right):
    `scheduler.steps` is the total number of decoding steps and `scheduler.options.block_length` the
    block length in tokens (the default, 32, is one block for these short completions).
    """

    kind: Literal["masked_diffusion"] = "masked_diffusion"
    t_min: float = Field(default=1e-3, gt=0.0, lt=1.0)
    """Smallest mask ratio (LLaDA/MDLM eps: 1e-3)."""
    default_scheduler: ClassVar[str] = "BlockRefinementScheduler"
    schedulers: ClassVar[frozenset[str]] = frozenset({"BlockRefinementScheduler"})

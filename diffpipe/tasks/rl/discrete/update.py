"""What the `rl` stage builds its per-step work from: the registered algorithm of a spec, and forward counts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from diffpipe.schemas.rl_discrete import DiscreteAlgorithmBase
from diffpipe.tasks.registry import get_implementation

from .base import DiscreteAlgorithm


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

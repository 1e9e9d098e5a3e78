"""Helpers shared by the flow-map tests."""

from __future__ import annotations

import torch


def generator(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)

"""Batched conditions of any domain (tensors, dicts or tuples of them, batch objects): select and repeat rows."""

from __future__ import annotations

from typing import Any

import torch


def repeat_conditions(cond: Any, times: int) -> Any:
    """Each condition repeated `times` times in a row.

    Conditions are tensors, dicts and tuples of them, None, or a batch object with `__len__` and
    `__getitem__` by an index tensor (such as the climate domain's `Forcing`).
    """
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond.repeat_interleave(times, dim=0)
    if isinstance(cond, dict):
        return {k: repeat_conditions(v, times) for k, v in cond.items()}
    if isinstance(cond, tuple | list):
        return type(cond)(repeat_conditions(v, times) for v in cond)
    if hasattr(cond, "__len__") and hasattr(cond, "__getitem__"):
        return cond[torch.arange(len(cond)).repeat_interleave(times)]
    raise TypeError(f"cannot repeat conditions of type {type(cond).__name__}")


def select_conditions(cond: Any, index: torch.Tensor) -> Any:
    """The rows `index` of conditions (same structures as `repeat_conditions`)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[index.to(cond.device)]
    if isinstance(cond, dict):
        return {k: select_conditions(v, index) for k, v in cond.items()}
    if isinstance(cond, tuple | list):
        return type(cond)(select_conditions(v, index) for v in cond)
    if hasattr(cond, "__len__") and hasattr(cond, "__getitem__"):
        return cond[index]
    raise TypeError(f"cannot index conditions of type {type(cond).__name__}")

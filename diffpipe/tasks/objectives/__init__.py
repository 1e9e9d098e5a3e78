"""Training losses of the pretraining objectives, one module each (see `OBJECTIVE_MODULES` in the registry).

Every objective calls the network as `net(x, timestep, cond)`. The timestep the network sees is the
diffusers convention of the objective's schedulers (flow matching: 1000 t; DDPM: the integer step),
except EDM, whose log-sigma noise input is mapped to the flow-matching value 1000 sigma / (1 + sigma) so
every network sees one embedding range. Losses are per sample (EDM style); each loss class takes its
objective's schema object.

Each loss draws its noise for the whole batch it is given, then keeps this rank's rows
(`distributed.local_rows`; all of them in one process), so every example's noise is the same at any
world size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffpipe.schemas import Objective

NetFn = Callable[..., torch.Tensor]
"""net(x, timestep, cond, r_timestep=None) -> network output, as a domain calls its network (diffusers times).

`r_timestep` is the end of the jump for a two-time (flow-map) network; one-time networks ignore it."""

LossFn = Callable[[Any, torch.Tensor, Any, torch.Generator], torch.Tensor]
"""loss(net, x0, cond, generator) -> per-sample loss (B,)."""


def per_sample_mean(err: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return err.flatten(1).mean(1)


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector (B,) so it broadcasts against a batch `like` (B, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def make_loss(spec: Objective) -> LossFn:
    """The per-sample training loss of an objective: its registered loss class built from its schema object."""
    from diffpipe.tasks.registry import get_implementation

    return get_implementation("objective", spec.kind)(spec)

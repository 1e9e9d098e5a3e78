"""Energy-function targets, one module each, built from their schema by `make_target`."""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.schemas.targets import (
    DoubleWellParticlesTarget,
    GaussianMixtureTarget,
    IsingTarget,
    ManyWellTarget,
    PottsTarget,
)


def make_target(spec: Any) -> Any:
    """The target object for a target spec (log_prob, log_z, exact_sample, ...)."""
    from .dw4 import DoubleWellParticles
    from .gmm import GaussianMixture
    from .ising import Ising
    from .many_well import ManyWell
    from .potts import Potts

    classes = {GaussianMixtureTarget: GaussianMixture, ManyWellTarget: ManyWell,
               DoubleWellParticlesTarget: DoubleWellParticles, IsingTarget: Ising, PottsTarget: Potts}
    return classes[type(spec)](spec)


def grad_log_prob(target: Any, x: torch.Tensor) -> torch.Tensor:
    """The score grad_x log pi(x) of a continuous target (autograd; no graph kept)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(target.log_prob(x).sum(), x)
    return grad

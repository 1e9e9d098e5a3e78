"""The Ising model on a periodic L x L lattice: tokens 0, 1 are spins -1, +1."""

from __future__ import annotations

import torch

from diffpipe.schemas.targets import IsingTarget

from .lattice import Lattice


class Ising(Lattice):
    """H = -J sum_<ij> s_i s_j - h sum_i s_i."""

    def __init__(self, spec: IsingTarget):
        super().__init__(spec)
        self.coupling, self.field = spec.coupling, spec.field

    def bond(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """-J s_a s_b."""
        return -self.coupling * ((2 * a - 1) * (2 * b - 1)).double()

    def site(self, a: torch.Tensor) -> torch.Tensor:
        """-h s_a."""
        return -self.field * (2 * a - 1).double()

    def magnetisation(self, x: torch.Tensor) -> torch.Tensor:
        """Mean spin of each configuration."""
        return (2 * x.double() - 1).mean(-1)

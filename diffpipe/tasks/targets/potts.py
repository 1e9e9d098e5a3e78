"""The q-state Potts model on a periodic L x L lattice."""

from __future__ import annotations

import torch

from diffpipe.schemas.targets import PottsTarget

from .lattice import Lattice


class Potts(Lattice):
    """H = -J sum_<ij> delta(s_i, s_j)."""

    def __init__(self, spec: PottsTarget):
        super().__init__(spec)
        self.coupling = spec.coupling

    def bond(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """-J when both ends agree."""
        return -self.coupling * (a == b).double()

    def site(self, a: torch.Tensor) -> torch.Tensor:
        """No field."""
        return torch.zeros(a.shape, dtype=torch.float64)

    def magnetisation(self, x: torch.Tensor) -> torch.Tensor:
        """Fraction of sites in the most frequent state of each configuration."""
        counts = torch.nn.functional.one_hot(x.long(), self.num_states).sum(1)
        return counts.max(-1).values.double() / x.shape[1]

"""Periodic L x L lattice models: energies, exact log Z (row transfer matrix or enumeration), exact samples,
and the checkerboard Metropolis sweep the MCMC ground truth uses.

A model defines `bond(a, b)` (energy of a right or down bond between states a, b) and `site(a)` (energy of a
site in state a), both on integer tensors; pi(s) ~ exp(-beta H(s)), H = sum of bonds + sum of sites.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from diffpipe.schemas.targets import MAX_ENUMERATED_STATES, LatticeTarget


class Lattice:
    """Shared behaviour of lattice targets; configurations are (B, L*L) integer tokens in 0..q-1."""

    discrete = True

    def __init__(self, spec: LatticeTarget):
        self.spec, self.size, self.beta = spec, spec.size, spec.beta
        self.num_states, self.dim = spec.num_states, spec.num_sites

    def bond(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Energy of a bond between states a and b."""
        raise NotImplementedError

    def site(self, a: torch.Tensor) -> torch.Tensor:
        """Energy of a site in state a."""
        raise NotImplementedError

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """Configurations as (B, L, L)."""
        return x.reshape(x.shape[0], self.size, self.size)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """H(s) of a batch of configurations (B, L*L)."""
        g = self.grid(x.long())
        bonds = self.bond(g, g.roll(-1, 2)) + self.bond(g, g.roll(-1, 1))
        return (bonds + self.site(g)).flatten(1).sum(-1).to(torch.float64)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """-beta H(s)."""
        return -self.beta * self.energy(x)

    def magnetisation(self, x: torch.Tensor) -> torch.Tensor:
        """Per configuration: the mean spin (Ising) or the fraction of sites in the most frequent state (Potts)."""
        raise NotImplementedError

    # exact results -----------------------------------------------------------------------------------------
    def _row_states(self) -> torch.Tensor:
        rows = itertools.product(range(self.num_states), repeat=self.size)
        return torch.tensor(list(rows), dtype=torch.long)

    def transfer_log_z(self, beta: float | None = None) -> float:
        """log Z = log Tr T^L with the symmetric row transfer matrix T (q^L row states), from its eigenvalues."""
        beta = self.beta if beta is None else beta
        rows = self._row_states()
        within = (self.bond(rows, rows.roll(-1, 1)) + self.site(rows)).sum(-1).double()
        between = self.bond(rows[:, None, :], rows[None, :, :]).sum(-1).double()
        exponent = -beta * (0.5 * (within[:, None] + within[None, :]) + between)
        shift = exponent.max()
        lam = np.linalg.eigvalsh(torch.exp(exponent - shift).numpy())
        top = lam.max()
        return float(self.size * (math.log(top) + shift) + math.log(np.sum((lam / top) ** self.size)))

    def enumerate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every configuration and its unnormalised log probability (q^(L*L) <= 2^20)."""
        count = self.num_states**self.dim
        if count > MAX_ENUMERATED_STATES:
            raise ValueError(f"{count} configurations are too many to enumerate (at most {MAX_ENUMERATED_STATES})")
        codes = torch.arange(count)
        digits = torch.stack([(codes // self.num_states**k) % self.num_states for k in range(self.dim)], dim=1)
        return digits, self.log_prob(digits)

    @property
    def enumerable(self) -> bool:
        """Whether exact samples can be drawn by enumeration."""
        return self.num_states**self.dim <= MAX_ENUMERATED_STATES

    def enumerated_log_z(self) -> float:
        """log Z by brute-force enumeration."""
        _, logp = self.enumerate()
        return float(torch.logsumexp(logp, 0))

    def log_z(self) -> float | None:
        """The exact log Z when the spec asks for it (transfer matrix), else None."""
        return self.transfer_log_z() if self.spec.exact_log_z else None

    def exact_mean_energy(self) -> float | None:
        """E[H] = -d log Z / d beta, by a central difference of the exact log Z (None without it)."""
        if not self.spec.exact_log_z:
            return None
        h = 1e-4 * max(1.0, self.beta)
        return -(self.transfer_log_z(self.beta + h) - self.transfer_log_z(self.beta - h)) / (2 * h)

    def exact_sample(self, n: int, gen: torch.Generator) -> torch.Tensor | None:
        """Exact samples by enumeration of every configuration (small lattices), else None."""
        if not self.enumerable:
            return None
        states, logp = self.enumerate()
        idx = torch.multinomial(torch.softmax(logp, 0), n, replacement=True, generator=gen)
        return states[idx]

    # MCMC --------------------------------------------------------------------------------------------------
    def local_energy(self, g: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Energy of every site's four bonds and its site term if it held `values` (neighbours from g)."""
        nbrs = (g.roll(1, 1), g.roll(-1, 1), g.roll(1, 2), g.roll(-1, 2))
        return sum(self.bond(values, n) for n in nbrs) + self.site(values)

    def metropolis_sweep(self, g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One checkerboard Metropolis sweep of a batch (B, L, L): every site proposes a uniform new state.

        Sites of one colour share no bond, so each half is updated at once. Needs even L for a proper
        checkerboard on the torus; odd L falls back to four interleaved sub-lattices.
        """
        ii, jj = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        colours = 2 if self.size % 2 == 0 else 4
        colour = (ii + jj) % 2 if colours == 2 else (ii % 2) * 2 + (jj % 2)
        for c in range(colours):
            mask = colour == c
            proposal = torch.randint(0, self.num_states, g.shape, generator=gen)
            delta = self.local_energy(g, proposal) - self.local_energy(g, g)
            accept = torch.rand(g.shape, generator=gen) < torch.exp(-self.beta * delta.double())
            g = torch.where(accept & mask, proposal, g)
        return g

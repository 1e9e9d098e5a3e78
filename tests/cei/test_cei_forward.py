"""The batched Coulomb explosion integrator: conservation laws, convergence, agreement with solve_ivp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpipe.tasks.data.cei.charges import masses_from_atomic_numbers
from diffpipe.tasks.data.cei.forward import kinetic_energy, potential_energy, simulate_explosion, solve_ivp_momenta


def reference_momenta(positions: np.ndarray, charges: np.ndarray, masses: np.ndarray,
                      t_end: float) -> np.ndarray:
    """Final momenta of one event from scipy's DOP853 at tight tolerances."""
    return solve_ivp_momenta(positions, charges, masses, t_end, rtol=1e-12, atol=1e-10)


def test_total_momentum_is_conserved(padded_batch):
    positions, charges, masses, mask = padded_batch
    result = simulate_explosion(positions, charges, masses, mask)
    total = result.momenta.sum(1).norm(dim=-1)
    scale = result.momenta.norm(dim=-1).amax(1)
    assert torch.all(total < 1e-10 * scale)
    assert torch.all(result.momenta[3, 3:] == 0) and torch.all(result.positions[3, 3:] == positions[3, 3:])


def test_energy_is_conserved(padded_batch):
    positions, charges, masses, mask = padded_batch
    result = simulate_explosion(positions, charges, masses, mask)
    m = mask.double()
    initial = potential_energy(positions, charges, m)
    final = potential_energy(result.positions, charges, m) + kinetic_energy(result.momenta, masses, m)
    assert torch.allclose(final, initial, rtol=1e-5)
    assert torch.all(potential_energy(result.positions, charges, m) < 1e-3 * initial)


def test_momenta_converge_with_end_time(padded_batch):
    positions, charges, masses, mask = padded_batch
    momenta = [simulate_explosion(positions, charges, masses, mask, t_end_au=t).momenta
               for t in (1e4, 1e5, 1e6)]
    first_change = (momenta[1] - momenta[0]).norm()
    second_change = (momenta[2] - momenta[1]).norm()
    assert second_change < 0.2 * first_change
    adaptive = simulate_explosion(positions, charges, masses, mask, momentum_rtol=1e-5)
    assert bool(adaptive.converged.all())
    longer = simulate_explosion(positions, charges, masses, mask, t_end_au=10 * adaptive.time_au)
    assert (adaptive.momenta - longer.momenta).norm() < 1e-5 * longer.momenta.norm()


@pytest.mark.parametrize("event", [0, 1, 3])
def test_agrees_with_solve_ivp(padded_batch, event):
    positions, charges, masses, mask = padded_batch
    m = mask[event]
    single = simulate_explosion(positions[event:event + 1, m], charges[event:event + 1, m],
                                masses[event:event + 1, m], t_end_au=2e5)
    expected = reference_momenta(positions[event, m].numpy(), charges[event, m].numpy(),
                                 masses[event, m].numpy(), 2e5)
    error = np.linalg.norm(single.momenta[0].numpy() - expected) / np.linalg.norm(expected)
    assert error < 1e-4


def test_padding_does_not_change_an_event(padded_batch):
    positions, charges, masses, mask = padded_batch
    batched = simulate_explosion(positions, charges, masses, mask, t_end_au=1e5)
    alone = simulate_explosion(positions[3:, :3], charges[3:, :3], masses[3:, :3], t_end_au=1e5)
    assert torch.allclose(batched.momenta[3, :3], alone.momenta[0], rtol=1e-6, atol=1e-8)


def test_laser_regime_matches_reference_magnitudes(ch2cl2):
    """science.md 2.3: CH2Cl2 with every ion 1+ gives |p| = 111, 180, 180, 63, 63 a.u. (C, Cl, Cl, H, H)."""
    masses = torch.tensor(masses_from_atomic_numbers(ch2cl2.atomic_numbers))[None]
    result = simulate_explosion(torch.tensor(ch2cl2.positions)[None], torch.ones(1, 5), masses)
    expected = torch.tensor([111.0, 180.0, 180.0, 63.0, 63.0], dtype=torch.float64)
    assert torch.allclose(result.momenta[0].norm(dim=-1), expected, rtol=0.02)

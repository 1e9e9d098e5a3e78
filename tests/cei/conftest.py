"""Shared fixtures of the CEI tests: a small molecule, masses, an xray-charged batch."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from diffpipe.tasks.data.cei.charges import masses_from_atomic_numbers
from diffpipe.tasks.data.cei.geometry import g2_molecules


@pytest.fixture(scope="session")
def ch2cl2():
    """Dichloromethane from G2 (5 atoms: C, Cl, Cl, H, H), positions in Bohr."""
    return next(m for m in g2_molecules(5, 5, ("H", "C", "Cl")) if m.name == "H2CCl2")


@pytest.fixture(scope="session")
def padded_batch(ch2cl2):
    """Three displaced CH2Cl2 events with X-ray charges plus a padded 3-atom event: (pos, q, m, mask)."""
    rng = np.random.default_rng(0)
    positions = np.zeros((4, 5, 3))
    positions[:3] = ch2cl2.positions + rng.normal(0, 0.1, (3, 5, 3))
    positions[3, :3] = ch2cl2.positions[[0, 3, 4]]
    elements = np.tile(ch2cl2.atomic_numbers, (4, 1))
    elements[3, 3:] = 0
    mask = elements > 0
    charges = np.where(elements == 17, 9, np.where(elements == 6, 3, 1)) * mask
    masses = masses_from_atomic_numbers(elements)
    return (torch.tensor(positions), torch.tensor(charges, dtype=torch.float64), torch.tensor(masses),
            torch.tensor(mask))

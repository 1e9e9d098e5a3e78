"""CEI metrics: Kabsch/Hungarian exact on rotated and permuted copies, round trip, coverage, aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpipe.errors import DataError
from diffpipe.tasks.data.cei.augment import random_rotations
from diffpipe.tasks.data.cei.charges import masses_from_atomic_numbers
from diffpipe.tasks.data.cei.forward import simulate_explosion
from diffpipe.tasks.data.cei.geometry import g2_molecules
from diffpipe.tasks.metrics.cei import (
    aggregate_by_molecule,
    cei_metrics,
    event_geometry_errors,
    geometry_errors,
    interval_coverage,
    match_atoms,
    momentum_round_trip,
)


def rotation(seed: int) -> np.ndarray:
    """A random proper rotation (3, 3)."""
    return random_rotations(1, torch.Generator().manual_seed(seed))[0].numpy()


def molecule(name: str):
    """A G2 molecule by name."""
    elements = ("H", "C", "N", "O", "F", "Cl", "S", "Si", "P")
    return next(m for m in g2_molecules(2, 14, elements) if m.name == name)


def test_rotated_copy_has_zero_error_after_kabsch():
    ref = molecule("CH3CH2OH").positions
    moved = ref @ rotation(1).T + np.array([3.0, -2.0, 1.0])
    errors = geometry_errors(moved, ref)
    assert errors["mae_kabsch_bohr"] < 1e-10 and errors["rmsd_bohr"] < 1e-10
    assert errors["distance_mae_bohr"] < 1e-10 and errors["mae_frame_bohr"] > 0.1


def test_mirror_image_is_not_aligned_by_a_rotation():
    ref = molecule("CH3CH2OH").positions
    assert geometry_errors(ref * np.array([1.0, 1.0, -1.0]), ref)["rmsd_bohr"] > 0.1


def test_known_shift_gives_known_errors():
    ref = molecule("H2O").positions
    pred = ref.copy()
    pred[0, 0] += 0.3
    errors = geometry_errors(pred, ref)
    # centroid moves by 0.1 in x: |dx| = 0.2, 0.1, 0.1 over 9 components
    assert errors["mae_frame_bohr"] == pytest.approx(0.4 / 9, rel=1e-9)


@pytest.mark.parametrize("name", ["CH3CH2OH", "CH4", "C2H6", "SiH2_s3B1d", "H2CCl2"])
def test_hungarian_recovers_rotated_permuted_copies(name):
    mol = molecule(name)
    rng = np.random.default_rng(3)
    ref = mol.positions
    perm = rng.permutation(len(ref))
    elements = mol.atomic_numbers
    shuffled = (ref @ rotation(7).T)[perm]
    shuffled_elements = elements[perm]
    match = match_atoms(shuffled, ref, shuffled_elements, elements)
    assert np.array_equal(shuffled_elements[match], elements)
    assert geometry_errors(shuffled[match], ref)["rmsd_bohr"] < 1e-8
    batch = event_geometry_errors(shuffled[None], ref[None], shuffled_elements[None],
                                  np.ones((1, len(ref)), bool), ref_elements=elements[None])
    assert batch["mae_kabsch_bohr"][0] < 1e-8


def test_round_trip_is_zero_for_the_true_geometry_and_grows_with_error():
    mol = molecule("H2CCl2")
    elements = mol.atomic_numbers[None]
    charges, mask = np.array([[3, 9, 9, 1, 1]]), np.ones((1, 5), bool)
    observed = simulate_explosion(torch.tensor(mol.positions)[None], torch.tensor(charges),
                                  torch.tensor(masses_from_atomic_numbers(elements)),
                                  momentum_rtol=1e-6).momenta
    exact = momentum_round_trip(mol.positions[None], charges, elements, mask, observed.numpy())
    wrong = momentum_round_trip(mol.positions[None] * 1.1, charges, elements, mask, observed.numpy())
    assert exact[0] < 1e-4 and wrong[0] > 0.03


def test_coverage_of_calibrated_and_overconfident_samples():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=(200, 6, 3))
    ref = centre + rng.normal(size=(200, 6, 3))
    mask = np.ones((200, 6), bool)
    mask[:, 5] = False
    calibrated = centre[None] + rng.normal(size=(400, 200, 6, 3))
    narrow = centre[None] + 0.3 * rng.normal(size=(400, 200, 6, 3))
    assert interval_coverage(calibrated, ref, mask).mean() == pytest.approx(0.9, abs=0.03)
    assert interval_coverage(narrow, ref, mask).mean() < 0.6


def test_aggregation_and_full_report():
    mol = molecule("H2O")
    ref = np.stack([mol.positions, mol.positions])
    pred = ref + np.array([0.0, 0.0, 0.1])
    elements, mask = np.tile(mol.atomic_numbers, (2, 1)), np.ones((2, 3), bool)
    charges = np.ones((2, 3))
    observed = simulate_explosion(torch.tensor(ref), torch.tensor(charges),
                                  torch.tensor(masses_from_atomic_numbers(elements))).momenta.numpy()
    report = cei_metrics(pred, ref, elements, charges, mask, observed, np.array([0, 1]), ["a", "b"],
                         samples=np.stack([pred - 1.0, pred + 1.0, pred]))
    assert report["overall"]["mae_kabsch_bohr"] < 1e-10
    assert report["overall"]["momentum_rel_error"] < 1e-4
    assert report["overall"]["coverage_0.9"] == 1.0 and report["per_molecule"]["b"]["n_events"] == 1
    grouped = aggregate_by_molecule({"x": np.array([1.0, 2.0, 4.0])}, np.array([0, 0, 1]), ["a", "b"])
    assert grouped["per_molecule"]["a"]["x"] == 1.5 and grouped["overall"]["x"] == pytest.approx(7 / 3)


def test_matching_different_atoms_raises():
    mol = molecule("H2O")
    with pytest.raises(DataError, match="different atoms"):
        match_atoms(mol.positions, mol.positions, np.array([8, 1, 1]), np.array([8, 8, 1]))

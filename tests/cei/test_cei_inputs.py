"""Geometry sources, charge rules and bad input: each problem names its file or molecule, the rest is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from diffpipe.errors import DataError
from diffpipe.tasks.data.cei.augment import drop_ions, random_rotations, smear_momenta
from diffpipe.tasks.data.cei.build import check_cei_store
from diffpipe.tasks.data.cei.charges import sample_charges
from diffpipe.tasks.data.cei.geometry import collect_molecules, g2_molecules, read_xyz

WATER = "3\nwater\nO 0.0 0.0 0.117\nH 0.0 0.757 -0.469\nH 0.0 -0.757 -0.469\n"


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


def test_g2_selection_respects_sizes_and_elements():
    molecules = g2_molecules(3, 4, ("H", "C", "O"))
    assert molecules and all(3 <= len(m.symbols) <= 4 for m in molecules)
    assert all(set(m.symbols) <= {"H", "C", "O"} for m in molecules)
    water = next(m for m in molecules if m.name == "H2O")
    assert np.linalg.norm(water.positions[0] - water.positions[1]) == pytest.approx(0.969 * 1.8897, abs=0.01)


def test_read_xyz_converts_angstrom_to_bohr(tmp_path):
    water = read_xyz(write(tmp_path, "water.xyz", WATER))
    assert water.symbols == ("O", "H", "H") and water.name == "water"
    assert water.positions[1, 1] == pytest.approx(0.757 * 1.8897, rel=1e-4)


@pytest.mark.parametrize(("text", "problem"), [
    ("three\nx\nO 0 0 0\n", "Expected xyz header"),
    ("2\nx\nO 0 0 0\n", "Frame has 1 atoms, expected 2"),
    ("2\nx\nO 0 0 0\nH 0 0 1\nH 0 0 -1\n", "Expected xyz header"),  # a count line below the atom lines
    ("2\nx\nO 0 0 zero\nH 0 0 1\n", "could not convert"),
    ("2\nx\nO 0 0\nH 0 0 1\n", "not a readable molecule file"),
    ("", "one molecule"),
])
def test_unparsable_xyz_names_the_file(tmp_path, text, problem):
    path = write(tmp_path, "bad.xyz", text)
    with pytest.raises(DataError, match=problem) as info:
        read_xyz(path)
    assert "bad.xyz" in info.value.where


def test_extended_xyz_is_read(tmp_path):
    text = "3\nProperties=species:S:1:pos:R:3 energy=-76.4 pbc=\"F F F\"\n" + "\n".join(WATER.splitlines()[2:]) + "\n"
    water = read_xyz(write(tmp_path, "water.xyz", text))
    assert water.symbols == ("O", "H", "H") and water.positions[1, 1] == pytest.approx(0.757 * 1.8897, rel=1e-4)


def test_bad_molecules_are_reported_and_the_rest_kept(tmp_path):
    write(tmp_path, "water.xyz", WATER)
    write(tmp_path, "broken.xyz", "not a number\n")
    write(tmp_path, "alien.xyz", "2\nx\nQq 0 0 0\nH 0 0 1\n")
    write(tmp_path, "xenon.xyz", "2\nx\nXe 0 0 0\nH 0 0 1.7\n")
    write(tmp_path, "squashed.xyz", "2\nx\nO 0 0 0\nH 0 0 0.2\n")
    good, problems = collect_molecules(False, 2, 9, ("H",), str(tmp_path), "xray", min_distance_bohr=0.8)
    assert [m.name for m in good] == ["water"]
    messages = {p.where.split("/")[-1].split(")")[0]: str(p) for p in problems}
    assert set(messages) == {"broken.xyz", "alien.xyz", "xenon.xyz", "squashed.xyz"}
    assert "unknown element" in messages["alien.xyz"]
    assert "no X-ray charge rule" in messages["xenon.xyz"]
    assert "overlapping atoms" in messages["squashed.xyz"] and "0.378 Bohr" in messages["squashed.xyz"]
    laser_good, _ = collect_molecules(False, 2, 9, ("H",), str(tmp_path), "laser", min_distance_bohr=0.8)
    assert sorted(m.name for m in laser_good) == ["water", "xenon"]


def test_missing_folder_and_unknown_regime_raise(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        collect_molecules(False, 2, 9, ("H",), str(tmp_path / "nowhere"), "laser", 0.8)
    with pytest.raises(DataError, match="unknown charge regime"):
        collect_molecules(True, 2, 3, ("H", "O"), None, "gamma", 0.8)


def test_charge_regimes():
    rng = np.random.default_rng(0)
    assert np.all(sample_charges(["C", "Cl", "H"], "laser", 5, rng) == 1)
    xray = sample_charges(["C", "Cl", "H"], "xray", 200, rng)
    assert np.all(xray[:, 2] == 1) and xray[:, 1].min() >= 7 and xray[:, 1].max() == 11
    assert set(np.unique(xray[:, 0])) == {2, 3, 4}


def test_incompatible_store_version_raises(tmp_path):
    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=3)
    group.attrs["cei_builder_version"] = "0.3"
    with pytest.raises(DataError, match="incompatible CEI builder") as info:
        check_cei_store(str(tmp_path / "old.zarr"))
    assert "old.zarr" in info.value.where and "0.3" in str(info.value)
    with pytest.raises(DataError, match="not a readable zarr store"):
        check_cei_store(str(tmp_path / "missing.zarr"))


def test_rotations_are_proper_and_detector_effects_behave():
    generator = torch.Generator().manual_seed(0)
    rotations = random_rotations(64, generator)
    identity = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    assert torch.allclose(rotations @ rotations.transpose(1, 2), identity, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(64, dtype=torch.float64))
    momenta = torch.randn(64, 5, 3, generator=generator) * 100
    mask = torch.ones(64, 5, dtype=torch.bool)
    assert torch.equal(smear_momenta(momenta, mask, generator=generator), momenta)
    smeared = smear_momenta(momenta, mask, relative_sigma=0.05, generator=generator)
    relative = ((smeared - momenta).norm(dim=-1) / momenta.norm(dim=-1)).mean()
    assert 0.03 < relative < 0.12
    detected = drop_ions(mask, loss_probability=0.5, generator=generator)
    assert detected.sum(1).min() >= 2 and detected.sum() < mask.sum()

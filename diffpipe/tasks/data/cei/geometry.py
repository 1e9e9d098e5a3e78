"""Molecular geometries for CEI: ASE's G2 collection, folders of user .xyz files, validation, displacements.

Positions are stored in Bohr. Bad molecules never stop a build: `collect_molecules` returns the good
molecules and one DataError per rejected molecule (naming the file or G2 entry and the problem).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from diffpipe.errors import DataError

from .charges import check_charge_rule, check_regime
from .units import BOHR_PER_ANGSTROM

DEFAULT_ELEMENTS = ("H", "C", "N", "O", "F", "Si", "P", "S", "Cl")
"""Elements of MOLEXA's chemical space that G2 also holds."""


@dataclass(frozen=True)
class Molecule:
    """One equilibrium geometry: a name, element symbols and positions (n_atoms, 3) in Bohr."""

    name: str
    symbols: tuple[str, ...]
    positions: np.ndarray
    source: str

    @property
    def atomic_numbers(self) -> np.ndarray:
        """Atomic numbers (n_atoms,)."""
        return np.array([atomic_numbers[s] for s in self.symbols], dtype=np.int64)


def g2_molecules(min_atoms: int, max_atoms: int, elements: tuple[str, ...]) -> list[Molecule]:
    """G2 molecules with min_atoms..max_atoms atoms made only of `elements`, sorted by name."""
    from ase.collections import g2

    allowed = set(elements)
    molecules = []
    for name in sorted(g2.names):
        atoms = g2[name]
        symbols = tuple(atoms.get_chemical_symbols())
        if min_atoms <= len(symbols) <= max_atoms and set(symbols) <= allowed:
            positions = np.asarray(atoms.positions, dtype=np.float64) * BOHR_PER_ANGSTROM
            molecules.append(Molecule(name, symbols, positions, source=f"ase.collections.g2:{name}"))
    return molecules


def read_xyz(path: Path) -> Molecule:
    """One molecule from a file `ase.io.read` understands (plain or extended XYZ, and ASE's other formats by
    suffix), in Angstrom; DataError naming the file when it does not parse, its count line disagrees with
    its atom lines, it names an unknown element or holds more than one frame."""
    import ase.io

    where = str(path)
    try:
        frames = ase.io.read(path, index=":", format="extxyz" if path.suffix == ".xyz" else None)
    except KeyError as err:
        raise DataError(where, "unknown element", found=str(err)) from None
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as err:
        problem = str(err).removeprefix("ase.io.extxyz: ")
        raise DataError(where, f"not a readable molecule file ({problem})") from None
    if len(frames) != 1:
        raise DataError(where, "a molecule file holds one molecule", expected="1 frame", found=f"{len(frames)} frames")
    atoms = frames[0]
    coords = np.asarray(atoms.get_positions(), dtype=np.float64) * BOHR_PER_ANGSTROM
    return Molecule(path.stem, tuple(atoms.get_chemical_symbols()), coords, source=where)


def validate_molecule(molecule: Molecule, regime: str, min_distance_bohr: float) -> None:
    """Raise DataError naming the molecule if it has < 2 atoms, an unknown element, or overlapping atoms."""
    where = f"molecule {molecule.name} ({molecule.source})"
    if len(molecule.symbols) < 2:
        raise DataError(where, "a Coulomb explosion needs at least 2 atoms", found=str(len(molecule.symbols)))
    check_charge_rule(list(molecule.symbols), regime, where)
    if not np.all(np.isfinite(molecule.positions)):
        raise DataError(where, "coordinates are not finite")
    closest = min_pair_distance(molecule.positions)
    if closest < min_distance_bohr:
        raise DataError(where, "overlapping atoms", expected=f"every distance >= {min_distance_bohr} Bohr",
                        found=f"{closest:.3f} Bohr")


def min_pair_distance(positions: np.ndarray) -> float:
    """Smallest interatomic distance of a geometry (n_atoms, 3)."""
    diff = positions[:, None, :] - positions[None, :, :]
    distances = np.linalg.norm(diff, axis=-1) + np.diag(np.full(len(positions), np.inf))
    return float(distances.min())


def collect_molecules(include_g2: bool, min_atoms: int, max_atoms: int, elements: tuple[str, ...],
                      xyz_folder: str | None, regime: str,
                      min_distance_bohr: float) -> tuple[list[Molecule], list[DataError]]:
    """Good molecules (G2 selection + user .xyz files, unique names) and one DataError per rejected one."""
    check_regime(regime)
    molecules = g2_molecules(min_atoms, max_atoms, elements) if include_g2 else []
    problems: list[DataError] = []
    if xyz_folder is not None:
        folder = Path(xyz_folder)
        if not folder.is_dir():
            raise DataError(str(folder), "xyz folder does not exist")
        for path in sorted(folder.glob("*.xyz")):
            try:
                molecules.append(read_xyz(path))
            except DataError as err:
                problems.append(err)
    good, seen = [], set()
    for molecule in molecules:
        try:
            validate_molecule(molecule, regime, min_distance_bohr)
            if molecule.name in seen:
                raise DataError(f"molecule {molecule.name} ({molecule.source})", "duplicate molecule name")
        except DataError as err:
            problems.append(err)
            continue
        seen.add(molecule.name)
        good.append(molecule)
    return good, problems


def displaced_geometries(molecule: Molecule, n: int, sigma_bohr: float, distortion_probability: float,
                         distortion_sigma_bohr: float, min_distance_bohr: float,
                         rng: np.random.Generator, max_tries: int = 100) -> np.ndarray:
    """n geometries (n, n_atoms, 3): Gaussian displacements of every atom, optionally a larger one of k atoms.

    Every coordinate moves by N(0, sigma_bohr^2); with probability `distortion_probability` a random
    number k of atoms additionally moves by N(0, distortion_sigma_bohr^2). Draws with two atoms closer
    than `min_distance_bohr` are redrawn. Results are centred at the centre of mass by the caller.
    """
    n_atoms = len(molecule.symbols)
    out = np.empty((n, n_atoms, 3))
    for i in range(n):
        for _ in range(max_tries):
            geometry = molecule.positions + rng.normal(0.0, sigma_bohr, size=(n_atoms, 3))
            if rng.random() < distortion_probability:
                moved = rng.permutation(n_atoms)[: rng.integers(1, n_atoms + 1)]
                geometry[moved] += rng.normal(0.0, distortion_sigma_bohr, size=(len(moved), 3))
            if min_pair_distance(geometry) >= min_distance_bohr:
                out[i] = geometry
                break
        else:
            raise DataError(f"molecule {molecule.name}", "displacements keep producing overlapping atoms",
                            expected=f"distances >= {min_distance_bohr} Bohr",
                            found=f"{max_tries} failed draws; lower the displacement sizes")
    return out

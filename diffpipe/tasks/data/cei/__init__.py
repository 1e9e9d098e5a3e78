"""Coulomb explosion imaging data: geometries, charge rules, batched forward model, augmentation, builder."""

from .augment import drop_ions, random_rotations, rotate, smear_momenta
from .build import (
    CEI_BUILDER_VERSION,
    CeiBuildReport,
    build_cei_dataset,
    check_cei_store,
    open_cei_store,
    split_molecules,
)
from .charges import CHARGE_REGIMES, XRAY_CHARGE_RANGES, masses_from_atomic_numbers, sample_charges
from .forward import ExplosionResult, kinetic_energy, potential_energy, simulate_explosion, solve_ivp_momenta
from .geometry import DEFAULT_ELEMENTS, Molecule, collect_molecules, g2_molecules, read_xyz, validate_molecule

__all__ = [
    "CEI_BUILDER_VERSION", "CHARGE_REGIMES", "DEFAULT_ELEMENTS", "XRAY_CHARGE_RANGES", "CeiBuildReport",
    "ExplosionResult", "Molecule", "build_cei_dataset", "check_cei_store", "collect_molecules", "drop_ions",
    "g2_molecules", "kinetic_energy", "masses_from_atomic_numbers", "open_cei_store", "potential_energy",
    "random_rotations", "read_xyz", "rotate", "sample_charges", "simulate_explosion", "smear_momenta",
    "solve_ivp_momenta",
    "split_molecules", "validate_molecule",
]

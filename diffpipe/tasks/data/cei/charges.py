"""Charge-state rules (strong-field laser vs X-ray multiphoton) and ion masses from ASE.

- ``laser``: every ion singly charged (strong-field ionisation of a small molecule).
- ``xray``: element-dependent high charges drawn per event, uniformly from an inclusive range per
  element (H always 1+, second-row atoms 2-4+, third-row atoms up to 9-11+ as in X-ray multiphoton
  CEI of CH2Cl2: Cl 9-11+, C 2+, H 1+). The ranges are a heuristic, not an ionisation model.
"""

from __future__ import annotations

import numpy as np
from ase.data import atomic_masses, atomic_numbers

from diffpipe.errors import DataError

from .units import ELECTRON_MASSES_PER_AMU

CHARGE_REGIMES = ("laser", "xray")

XRAY_CHARGE_RANGES: dict[str, tuple[int, int]] = {
    "H": (1, 1),
    "Li": (1, 2), "Be": (1, 3), "B": (1, 3), "C": (2, 4), "N": (2, 4), "O": (2, 4), "F": (2, 5),
    "Na": (2, 6), "Mg": (2, 6), "Al": (3, 8), "Si": (4, 9), "P": (5, 10), "S": (6, 10), "Cl": (7, 11),
    "Br": (8, 14), "I": (10, 18),
}
"""Inclusive (lowest, highest) charge per element in the X-ray regime."""


def check_regime(regime: str) -> None:
    """Raise DataError unless `regime` is one of CHARGE_REGIMES."""
    if regime not in CHARGE_REGIMES:
        raise DataError("charge_regime", "unknown charge regime", expected=" or ".join(CHARGE_REGIMES),
                        found=repr(regime))


def check_charge_rule(symbols: list[str], regime: str, where: str) -> None:
    """Raise DataError naming `where` if an element has no mass or no charge rule in `regime`."""
    check_regime(regime)
    for symbol in symbols:
        if symbol not in atomic_numbers or atomic_numbers[symbol] == 0:
            raise DataError(where, "unknown element", expected="a chemical symbol", found=repr(symbol))
        if regime == "xray" and symbol not in XRAY_CHARGE_RANGES:
            raise DataError(where, f"element {symbol} has no X-ray charge rule",
                            expected=", ".join(XRAY_CHARGE_RANGES), found=symbol)


def sample_charges(symbols: list[str], regime: str, n_events: int, rng: np.random.Generator) -> np.ndarray:
    """Charges (n_events, n_atoms) in e for one molecule under `regime`, drawn with `rng`."""
    if regime == "laser":
        return np.ones((n_events, len(symbols)), dtype=np.int64)
    low = np.array([XRAY_CHARGE_RANGES[s][0] for s in symbols])
    high = np.array([XRAY_CHARGE_RANGES[s][1] for s in symbols])
    return rng.integers(low, high + 1, size=(n_events, len(symbols)))


def masses_from_atomic_numbers(numbers: np.ndarray) -> np.ndarray:
    """Ion masses in electron masses for atomic numbers (0 = padding gets mass 1 to avoid division by 0)."""
    numbers = np.asarray(numbers)
    masses = atomic_masses[numbers] * ELECTRON_MASSES_PER_AMU
    return np.where(numbers > 0, masses, 1.0)

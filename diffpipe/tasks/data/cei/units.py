"""Atomic units used everywhere in the CEI domain (lengths in Bohr, momenta in hbar/Bohr, masses in m_e)."""

from __future__ import annotations

BOHR_PER_ANGSTROM = 1.0 / 0.529177210903
"""Lengths: 1 Angstrom = 1.8897 Bohr."""
ELECTRON_MASSES_PER_AMU = 1822.888486
"""Masses: 1 unified atomic mass unit = 1822.888 electron masses."""
AU_TIME_PER_PS = 41341.3745758
"""Time: 1 ps = 41,341 atomic time units."""

UNITS = {
    "positions": "bohr",
    "momenta": "hbar/bohr (atomic units)",
    "charge": "elementary charge",
    "mass": "electron mass",
    "time": "atomic time unit (2.4189e-17 s)",
}
"""Units of the stored variables, written into every store's attributes."""

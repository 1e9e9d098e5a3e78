"""Coulomb explosion imaging: the data set (builder options one to one, with units) and the atom transformer.

Lengths are in Bohr, momenta in atomic units (hbar/Bohr), time in atomic time units (2.4189e-17 s).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Strict


class CeiDetector(Strict):
    """Detector effects, applied to training batches on the fly (never baked into the store).

    Held-out conditions get the same momentum resolution (seeded) but keep all their ions.
    """

    momentum_resolution_rel: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Relative momentum resolution: each component gets N(0, (rel |p|)^2) noise (dimensionless)."""
    momentum_resolution_au: float = Field(default=0.0, ge=0.0)
    """Absolute momentum resolution added in quadrature (a.u., hbar/Bohr)."""
    ion_loss_probability: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Probability that an ion is not detected (training batches only)."""
    min_detected_ions: int = Field(default=2, ge=2)
    """Events left with fewer detected ions keep all of them (no coincidence event otherwise)."""


class CeiTraining(Strict):
    """How training batches are drawn from the store."""

    rotate_batches: bool = True
    """Rotate every training event (positions and momenta together) by a fresh uniform random rotation."""
    chunks_per_batch: int = Field(default=8, ge=1)
    """Store chunks a batch is drawn from (bounds memory and reads; all chunks when the split has fewer)."""


class CoulombExplosionData(Strict):
    """Simulated Coulomb explosions of G2 and/or user molecules (Dask -> zarr), split by molecule."""

    kind: Literal["coulomb_explosion"] = "coulomb_explosion"
    include_g2: bool = True
    """Use ASE's G2 molecules with min_atoms..max_atoms atoms made only of `elements`."""
    min_atoms: int = Field(default=2, ge=2)
    """Smallest G2 molecule (atoms)."""
    max_atoms: int = Field(default=9, ge=2)
    """Largest G2 molecule (atoms)."""
    elements: list[str] = Field(default_factory=lambda: ["H", "C", "N", "O", "F", "Si", "P", "S", "Cl"], min_length=1)
    """Chemical symbols a G2 molecule may contain."""
    xyz_folder: str | None = None
    """Folder of user .xyz files (Angstrom) added to the molecules; bad files are reported and skipped."""
    geometries_per_molecule: int = Field(default=200, ge=1)
    """Displaced geometries (events) per molecule."""
    displacement_sigma_bohr: float = Field(default=0.1, ge=0.0)
    """Gaussian displacement of every coordinate (Bohr)."""
    distortion_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    """Probability that an event additionally moves k random atoms by `distortion_sigma_bohr`."""
    distortion_sigma_bohr: float = Field(default=0.5, ge=0.0)
    """Size of those larger distortions (Bohr, per coordinate)."""
    charge_regime: Literal["laser", "xray"] = "laser"
    """`laser`: every ion 1+; `xray`: element-dependent high charges drawn per event."""
    min_distance_bohr: float = Field(default=0.8, gt=0.0)
    """Closest allowed interatomic distance (Bohr); closer draws are redrawn, such molecules rejected."""
    random_rotation: bool = True
    """Rotate every stored event uniformly (detector frame)."""
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Share of molecules held out for evaluation (never seen in training)."""
    test_molecules: list[str] | None = None
    """Names of the held-out molecules (None: a seeded `test_fraction` of them)."""
    split_seed: int = 0
    """Seed of the molecule split."""
    seed: int = 0
    """Seed of geometries, charges and rotations."""
    events_per_chunk: int = Field(default=2048, ge=1)
    """Events per Dask task and zarr chunk (part of the seeding: changes the data)."""
    momentum_rtol: float = Field(default=1e-4, gt=0.0)
    """Integrate until the momenta change by less than this (relative) over one decade of time."""
    steps_per_decade: int = Field(default=32, ge=1)
    """RK4 steps per decade of time (log-spaced steps)."""
    max_time_au: float = Field(default=1e9, gt=0.0)
    """Longest integration time (atomic time units)."""
    detector: CeiDetector = Field(default_factory=CeiDetector)
    """Detector effects (training-time augmentation)."""
    training: CeiTraining = Field(default_factory=CeiTraining)
    """How training batches are drawn and rotated."""

    @model_validator(mode="after")
    def _check_sizes(self) -> CoulombExplosionData:
        if self.max_atoms < self.min_atoms:
            raise ValueError(f"max_atoms ({self.max_atoms}) must be >= min_atoms ({self.min_atoms})")
        if not self.include_g2 and self.xyz_folder is None:
            raise ValueError("no molecules: set include_g2 or xyz_folder")
        return self

    def builder_options(self) -> dict:
        """Keyword arguments of `build_cei_dataset` (everything but the kind, detector and training blocks)."""
        options = self.model_dump(exclude={"kind", "detector", "training"})
        options["elements"] = tuple(options["elements"])
        if options["test_molecules"] is not None:
            options["test_molecules"] = tuple(options["test_molecules"])
        return options


class AtomTransformerSpec(Strict):
    """diffpipe's `AtomTransformer` over the ions of an event (element, charge, momentum tokens).

    The regression objective builds its deterministic twin (same backbone). Coordinates reach the
    network divided by the data's RMS coordinate, so its own coordinate scale stays 1.
    """

    arch: Literal["atom_transformer"] = "atom_transformer"
    width: int = Field(default=128, ge=8)
    """Token width."""
    depth: int = Field(default=4, ge=1)
    """Transformer blocks."""
    heads: int = Field(default=4, ge=1)
    """Attention heads (must divide `width`)."""
    max_atomic_number: int = Field(default=54, ge=1)
    """Largest element Z the embedding holds."""
    max_charge: int = Field(default=20, ge=1)
    """Largest ion charge the embedding holds (e)."""
    momentum_scale_au: float = Field(default=100.0, gt=0.0)
    """Momenta are divided by this before entering the network (a.u.)."""
    use_momentum_frame: bool = True
    """Work in the momentum principal-axes frame (SO(3)-equivariant by construction)."""

    @model_validator(mode="after")
    def _check_heads(self) -> AtomTransformerSpec:
        if self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")
        return self

"""Build a CEI data set with Dask: events simulated in chunks, each written as a region of one zarr v3 store.

Store layout (xarray, dims event, atom, xyz; atoms padded to the largest molecule):
  positions (event, atom, xyz) float32 Bohr  - initial geometry, centre of mass at 0, randomly rotated
  momenta   (event, atom, xyz) float32 a.u.  - asymptotic ion momenta in the same (detector) frame
  mask (event, atom) bool, element (event, atom) int8 (0 = padding), charge (event, atom) int8 (e)
  molecule_id, geometry_id (event) int32, converged (event) bool
  molecule_n_atoms, molecule_is_test (molecule)
Attributes: builder version, units, every generator parameter, molecule names and sources, rejected
molecules with the reason, n_train_events. Train molecules come first, so each split is one slice
of events (`open_cei_store(path, split=...)`). Chunk k is generated from SeedSequence([seed, k]), so
the data do not depend on the number of workers or on scheduling.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dask.array as da
import numpy as np
import torch
import xarray as xr

from diffpipe.errors import DataError

from ...context import ProgressBars, no_progress
from ...dask_cluster import dask_client
from ...dask_progress import gather
from .augment import random_rotations, rotate
from .charges import masses_from_atomic_numbers, sample_charges
from .forward import simulate_explosion
from .geometry import DEFAULT_ELEMENTS, Molecule, collect_molecules, displaced_geometries
from .units import UNITS

CEI_BUILDER_VERSION = "1.0"
"""Version of the store layout and generator; a different major version cannot be read."""

SPLITS = ("train", "test")


@dataclass(frozen=True)
class CeiBuildReport:
    """What a build wrote: event counts per split, molecules per split, rejected molecules, timings."""

    store_path: str
    n_events: int
    n_train_events: int
    max_atoms: int
    train_molecules: list[str]
    test_molecules: list[str]
    rejected: list[str]
    unconverged_events: int
    wall_time_s: float


@dataclass(frozen=True)
class _ChunkJob:
    """Everything one Dask task needs to simulate and write events [start, stop)."""

    index: int
    start: int
    stop: int
    store_path: str
    max_atoms: int
    params: dict


def build_cei_dataset(*, store_path: str, include_g2: bool = True, min_atoms: int = 2, max_atoms: int = 9,
                      elements: tuple[str, ...] = DEFAULT_ELEMENTS, xyz_folder: str | None = None,
                      geometries_per_molecule: int = 200, displacement_sigma_bohr: float = 0.1,
                      distortion_probability: float = 0.0, distortion_sigma_bohr: float = 0.5,
                      charge_regime: str = "laser", min_distance_bohr: float = 0.8,
                      random_rotation: bool = True, test_fraction: float = 0.2,
                      test_molecules: tuple[str, ...] | None = None, split_seed: int = 0, seed: int = 0,
                      events_per_chunk: int = 2048, momentum_rtol: float = 1e-4, steps_per_decade: int = 32,
                      max_time_au: float = 1e9, n_workers: int = 2, dask_address: str | None = None,
                      client=None, bars: ProgressBars = no_progress) -> CeiBuildReport:
    """Simulate Coulomb explosions of G2 and/or user molecules with Dask and write one zarr v3 store.

    Geometry: include_g2 (G2 molecules with min_atoms..max_atoms atoms of `elements`), xyz_folder
    (user .xyz files, Angstrom, all atom counts >= 2); per molecule `geometries_per_molecule` events
    with Gaussian displacements of `displacement_sigma_bohr` (Bohr, per coordinate) and, with
    `distortion_probability`, extra `distortion_sigma_bohr` (Bohr) moves of k random atoms; draws with
    atoms closer than `min_distance_bohr` (Bohr) are redrawn and such input molecules rejected.
    Physics: `charge_regime` ('laser' all 1+, 'xray' element ranges), integration until the momenta
    change by < `momentum_rtol` (relative) per decade of time, `steps_per_decade` RK4 steps, at most
    `max_time_au` (atomic time units). `random_rotation` rotates every event uniformly.
    Split: `test_molecules` (names) or a `test_fraction` of molecules drawn with `split_seed`.
    Runtime: `events_per_chunk` events per Dask task and zarr chunk; a LocalCluster of `n_workers`
    single-threaded processes, or the scheduler at `dask_address`, or a given distributed `client`.
    `bars` shows the simulated events as chunks finish.
    """
    started = time.perf_counter()
    params = {
        "include_g2": include_g2, "min_atoms": min_atoms, "max_atoms": max_atoms, "elements": list(elements),
        "xyz_folder": xyz_folder, "geometries_per_molecule": geometries_per_molecule,
        "displacement_sigma_bohr": displacement_sigma_bohr, "distortion_probability": distortion_probability,
        "distortion_sigma_bohr": distortion_sigma_bohr, "charge_regime": charge_regime,
        "min_distance_bohr": min_distance_bohr, "random_rotation": random_rotation,
        "test_fraction": test_fraction,
        "test_molecules": None if test_molecules is None else list(test_molecules),
        "split_seed": split_seed, "seed": seed, "events_per_chunk": events_per_chunk,
        "momentum_rtol": momentum_rtol, "steps_per_decade": steps_per_decade, "max_time_au": max_time_au,
    }
    _check_options(params)
    good, problems = collect_molecules(include_g2, min_atoms, max_atoms, tuple(elements), xyz_folder,
                                       charge_regime, min_distance_bohr)
    if not good:
        raise DataError(store_path, "no usable molecule for this build",
                        found="; ".join(str(p) for p in problems) or "an empty selection")
    train, test = split_molecules(good, test_fraction, test_molecules, split_seed)
    ordered = train + test
    max_atoms_found = max(len(m.symbols) for m in ordered)
    n_events = len(ordered) * geometries_per_molecule
    _write_template(store_path, ordered, len(train), max_atoms_found, params, problems)
    jobs = [_ChunkJob(k, start, min(start + events_per_chunk, n_events), store_path, max_atoms_found,
                      {**params, "molecules": ordered})
            for k, start in enumerate(range(0, n_events, events_per_chunk))]
    with _dask_client(n_workers, dask_address, client) as dask_client, bars("events", n_events) as advance:
        futures = dask_client.map(simulate_chunk, jobs, pure=False)
        unconverged = sum(gather(dask_client, futures, advance, [job.stop - job.start for job in jobs]))
    return CeiBuildReport(store_path, n_events, len(train) * geometries_per_molecule, max_atoms_found,
                          [m.name for m in train], [m.name for m in test], [str(p) for p in problems],
                          int(unconverged), time.perf_counter() - started)


def _check_options(params: dict) -> None:
    """Raise DataError on option values that cannot produce a data set."""
    positive = ("geometries_per_molecule", "events_per_chunk", "steps_per_decade", "momentum_rtol",
                "max_time_au", "min_atoms")
    for name in positive:
        if not params[name] > 0:
            raise DataError(name, "must be positive", found=repr(params[name]))
    if not 0.0 <= params["test_fraction"] <= 1.0:
        raise DataError("test_fraction", "out of range", expected="0 <= test_fraction <= 1",
                        found=repr(params["test_fraction"]))
    if not 0.0 <= params["distortion_probability"] <= 1.0:
        raise DataError("distortion_probability", "out of range", expected="[0, 1]",
                        found=repr(params["distortion_probability"]))


def split_molecules(molecules: list[Molecule], test_fraction: float, test_names: tuple[str, ...] | None,
                    split_seed: int) -> tuple[list[Molecule], list[Molecule]]:
    """Split molecules (never events) into train and test: named test molecules, or a seeded fraction."""
    names = [m.name for m in molecules]
    if test_names is not None:
        unknown = sorted(set(test_names) - set(names))
        if unknown:
            raise DataError("test_molecules", "names not among the usable molecules",
                            found=", ".join(unknown))
        chosen = set(test_names)
    else:
        n_test = round(test_fraction * len(names))
        if 0.0 < test_fraction < 1.0 and len(names) >= 2:
            n_test = min(max(n_test, 1), len(names) - 1)
        order = np.random.default_rng(split_seed).permutation(len(names))
        chosen = {names[i] for i in order[:n_test]}
    return [m for m in molecules if m.name not in chosen], [m for m in molecules if m.name in chosen]


def _write_template(store_path: str, molecules: list[Molecule], n_train: int, max_atoms: int, params: dict,
                    problems: list[DataError]) -> None:
    """Create the store with every variable allocated (lazy, not computed) and all attributes."""
    n_events = len(molecules) * params["geometries_per_molecule"]
    chunk = params["events_per_chunk"]

    def lazy(dtype: str, *shape: int) -> da.Array:
        return da.zeros((n_events, *shape), dtype=dtype, chunks=(chunk, *shape))

    data_vars = {
        "positions": (("event", "atom", "xyz"), lazy("float32", max_atoms, 3), {"units": UNITS["positions"]}),
        "momenta": (("event", "atom", "xyz"), lazy("float32", max_atoms, 3), {"units": UNITS["momenta"]}),
        "mask": (("event", "atom"), lazy("bool", max_atoms), {"description": "True for real atoms"}),
        "element": (("event", "atom"), lazy("int8", max_atoms), {"description": "Z, 0 = padding"}),
        "charge": (("event", "atom"), lazy("int8", max_atoms), {"units": UNITS["charge"]}),
        "molecule_id": (("event",), lazy("int32"), {"description": "index into attrs molecule_names"}),
        "geometry_id": (("event",), lazy("int32"), {"description": "draw index within the molecule"}),
        "converged": (("event",), lazy("bool"), {"description": "momenta met momentum_rtol"}),
        "molecule_n_atoms": (("molecule",), np.array([len(m.symbols) for m in molecules], dtype=np.int32)),
        "molecule_is_test": (("molecule",), np.arange(len(molecules)) >= n_train),
    }
    attrs = {
        "cei_builder_version": CEI_BUILDER_VERSION, "units": UNITS, "generator_parameters": params,
        "molecule_names": [m.name for m in molecules], "molecule_sources": [m.source for m in molecules],
        "n_train_events": n_train * params["geometries_per_molecule"],
        "rejected_molecules": [str(p) for p in problems],
    }
    xr.Dataset(data_vars, attrs=attrs).to_zarr(store_path, mode="w", compute=False, zarr_format=3,
                                               consolidated=False)


def simulate_chunk(job: _ChunkJob) -> int:
    """Simulate events [job.start, job.stop) and write them into the store; returns unconverged count."""
    torch.set_num_threads(1)
    params = job.params
    seeds = np.random.SeedSequence([params["seed"], job.index])
    rng = np.random.default_rng(seeds)
    generator = torch.Generator().manual_seed(int(seeds.generate_state(1)[0]))
    per_molecule = params["geometries_per_molecule"]
    events = np.arange(job.start, job.stop)
    molecule_ids, geometry_ids = events // per_molecule, events % per_molecule
    n, a = len(events), job.max_atoms
    positions, charges = np.zeros((n, a, 3)), np.zeros((n, a), dtype=np.int64)
    elements, mask = np.zeros((n, a), dtype=np.int64), np.zeros((n, a), dtype=bool)
    for mol_id in np.unique(molecule_ids):
        rows = np.flatnonzero(molecule_ids == mol_id)
        molecule = params["molecules"][mol_id]
        k = len(molecule.symbols)
        positions[rows, :k] = displaced_geometries(
            molecule, len(rows), params["displacement_sigma_bohr"], params["distortion_probability"],
            params["distortion_sigma_bohr"], params["min_distance_bohr"], rng)
        charges[rows, :k] = sample_charges(list(molecule.symbols), params["charge_regime"], len(rows), rng)
        elements[rows, :k], mask[rows, :k] = molecule.atomic_numbers, True
    masses = masses_from_atomic_numbers(elements)
    positions = _centre_of_mass_frame(positions, masses, mask)
    result = simulate_explosion(torch.from_numpy(positions), torch.from_numpy(charges).double(),
                                torch.from_numpy(masses), torch.from_numpy(mask),
                                momentum_rtol=params["momentum_rtol"], max_time_au=params["max_time_au"],
                                steps_per_decade=params["steps_per_decade"])
    start_positions, momenta = torch.from_numpy(positions), result.momenta
    if params["random_rotation"]:
        rotations = random_rotations(n, generator)
        start_positions, momenta = rotate(start_positions, rotations), rotate(momenta, rotations)
    chunk = xr.Dataset({
        "positions": (("event", "atom", "xyz"), start_positions.numpy().astype(np.float32)),
        "momenta": (("event", "atom", "xyz"), momenta.numpy().astype(np.float32)),
        "mask": (("event", "atom"), mask),
        "element": (("event", "atom"), elements.astype(np.int8)),
        "charge": (("event", "atom"), charges.astype(np.int8)),
        "molecule_id": (("event",), molecule_ids.astype(np.int32)),
        "geometry_id": (("event",), geometry_ids.astype(np.int32)),
        "converged": (("event",), result.converged.numpy()),
    })
    chunk.to_zarr(job.store_path, region={"event": slice(job.start, job.stop)}, consolidated=False)
    return int((~result.converged).sum())


def _centre_of_mass_frame(positions: np.ndarray, masses: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift each geometry so that its centre of mass is at the origin (padding stays at 0)."""
    weights = masses * mask
    centre = (weights[..., None] * positions).sum(1, keepdims=True) / weights.sum(1)[:, None, None]
    return (positions - centre) * mask[..., None]


@contextlib.contextmanager
def _dask_client(n_workers: int, dask_address: str | None, client) -> Iterator:
    """The given client, a client of the scheduler at dask_address, or a fresh LocalCluster of n_workers."""
    if client is not None:
        yield client
        return
    with dask_client(dask_address, max(1, n_workers)) as own:
        yield own


def check_cei_store(store_path: str) -> xr.Dataset:
    """Open a CEI store lazily; DataError naming the store if missing or from an incompatible builder."""
    try:
        dataset = xr.open_zarr(store_path, consolidated=False)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise DataError(store_path, "not a readable zarr store", found=str(err)) from None
    found = dataset.attrs.get("cei_builder_version")
    if found is None or str(found).split(".")[0] != CEI_BUILDER_VERSION.split(".")[0]:
        raise DataError(store_path, "store written by an incompatible CEI builder; rebuild it",
                        expected=f"cei_builder_version {CEI_BUILDER_VERSION.split('.')[0]}.x",
                        found=repr(found))
    return dataset


def open_cei_store(store_path: str, split: str | None = None) -> xr.Dataset:
    """Version-checked lazy view of a store: all events, or the 'train' or 'test' molecules' events."""
    dataset = check_cei_store(store_path)
    if split is None:
        return dataset
    if split not in SPLITS:
        raise DataError("split", "unknown split", expected=" or ".join(SPLITS), found=repr(split))
    n_train = int(dataset.attrs["n_train_events"])
    events = slice(0, n_train) if split == "train" else slice(n_train, dataset.sizes["event"])
    return dataset.isel(event=events)

"""A tiny Dask build (2 workers) into a real zarr v3 store: layout, physics, split by molecule, reruns."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster
from helpers import RecordedBars

from diffpipe.errors import DataError
from diffpipe.tasks.data.cei.build import CEI_BUILDER_VERSION, build_cei_dataset, open_cei_store

OPTIONS = dict(include_g2=True, min_atoms=2, max_atoms=3, elements=("H", "C", "N", "O"),
               geometries_per_molecule=6, events_per_chunk=16, charge_regime="xray", test_fraction=0.3,
               seed=5, split_seed=1)


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded in-process Dask workers (fast to start, a real scheduler)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as local:
        yield local


@pytest.fixture(scope="module")
def built(cluster, tmp_path_factory):
    """One build from a client, with a user folder holding one good and one broken .xyz file."""
    root = tmp_path_factory.mktemp("cei")
    (root / "xyz").mkdir()
    (root / "xyz" / "hydroxyl.xyz").write_text("2\nOH\nO 0 0 0\nH 0 0 0.97\n")
    (root / "xyz" / "broken.xyz").write_text("2\nOH\nO 0 0 0\n")
    bars = RecordedBars()
    with Client(cluster) as client:
        report = build_cei_dataset(store_path=str(root / "a.zarr"), xyz_folder=str(root / "xyz"),
                                   client=client, bars=bars, **OPTIONS)
    assert bars.totals == {"events": report.n_events} and bars.done("events") == report.n_events  # chunk by chunk
    assert len(bars.advances["events"]) == -(-report.n_events // OPTIONS["events_per_chunk"])
    return root, report


def test_store_reopens_with_the_declared_layout(built):
    root, report = built
    dataset = xr.open_zarr(root / "a.zarr", consolidated=False)
    assert dict(dataset.sizes) == {"event": report.n_events, "atom": 3, "xyz": 3,
                                   "molecule": len(report.train_molecules) + len(report.test_molecules)}
    assert dataset.attrs["cei_builder_version"] == CEI_BUILDER_VERSION
    assert dataset.attrs["units"]["positions"] == "bohr"
    assert dataset.attrs["generator_parameters"]["charge_regime"] == "xray"
    assert "hydroxyl" in dataset.attrs["molecule_names"]
    assert len(report.rejected) == 1 and "broken.xyz" in report.rejected[0]
    assert dataset.positions.dtype == np.float32 and dataset.element.dtype == np.int8
    assert dataset.positions.encoding["chunks"][0] == OPTIONS["events_per_chunk"]


def test_stored_events_are_physical(built):
    root, report = built
    dataset = open_cei_store(str(root / "a.zarr")).load()
    mask = dataset["mask"].values
    momenta = dataset.momenta.values
    assert np.all((dataset.element.values > 0) == mask) and np.all(mask.sum(1) >= 2)
    assert np.all(np.abs(momenta.sum(1)) < 1e-3 * np.abs(momenta).max(axis=(1, 2))[:, None])
    assert np.all(momenta[~mask] == 0) and np.all(dataset.charge.values[mask] >= 1)
    assert report.unconverged_events == 0 and bool(dataset.converged.all())
    assert np.all(dataset.molecule_n_atoms.values[dataset.molecule_id.values] == mask.sum(1))


def test_split_is_by_molecule(built):
    root, report = built
    train, test = open_cei_store(str(root / "a.zarr"), "train"), open_cei_store(str(root / "a.zarr"), "test")
    names = train.attrs["molecule_names"]
    train_names = {names[i] for i in np.unique(train.molecule_id.values)}
    test_names = {names[i] for i in np.unique(test.molecule_id.values)}
    assert train_names == set(report.train_molecules) and test_names == set(report.test_molecules)
    assert test_names and not train_names & test_names
    assert train.sizes["event"] + test.sizes["event"] == report.n_events
    assert np.all(train.molecule_is_test.values[np.unique(test.molecule_id.values)])
    with pytest.raises(DataError, match="unknown split"):
        open_cei_store(str(root / "a.zarr"), "validation")


def test_rebuild_through_scheduler_address_is_identical(built, cluster):
    root, _ = built
    build_cei_dataset(store_path=str(root / "b.zarr"), xyz_folder=str(root / "xyz"),
                      dask_address=cluster.scheduler_address, **OPTIONS)
    first = xr.open_zarr(root / "a.zarr", consolidated=False)
    second = xr.open_zarr(root / "b.zarr", consolidated=False)
    xr.testing.assert_identical(first.load(), second.load())


def test_named_test_molecules_and_bad_options(built, cluster):
    root, _ = built
    with pytest.raises(DataError, match="names not among the usable molecules"):
        build_cei_dataset(store_path=str(root / "c.zarr"), test_molecules=("unobtainium",),
                          dask_address=cluster.scheduler_address, **{**OPTIONS, "test_fraction": 0.0})
    with pytest.raises(DataError, match="no usable molecule"):
        build_cei_dataset(store_path=str(root / "c.zarr"), dask_address=cluster.scheduler_address,
                          **{**OPTIONS, "elements": ("He",)})

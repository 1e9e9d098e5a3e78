"""The climate RL judge: the global-mean tas a forcing implies, and the reward built on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffpipe.tasks.data.climate import ClimateBuildOptions, ClimateSamples, build_climate_store, scenario_view
from diffpipe.tasks.data.climate.batches import static_channels, to_batch
from diffpipe.tasks.data.climate.evaluation import fit_global_response, global_forcers
from diffpipe.tasks.data.climate.layout import open_climate_store
from diffpipe.tasks.data.climate.response import ForcingResponse
from diffpipe.tasks.data.climate.rewards import global_mean_response
from diffpipe.tasks.metrics.climate import area_mean
from diffpipe.tasks.rl.rewards import resolve_reward

SMALL = ClimateBuildOptions(nlat=6, nlon=8, members=2, scenarios=("historical", "hist-aer", "ssp245"),
                            stats_scenarios=("historical", "hist-aer"), dask_workers=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small store in a data-artifact-like folder (`climate.zarr` inside)."""
    folder = tmp_path_factory.mktemp("data")
    build_climate_store(folder / "climate.zarr", SMALL)
    return folder


def _batch(folder: Path, rows: list[int]):
    samples = ClimateSamples(folder / "climate.zarr", ["ssp245"], history=3)
    ds = open_climate_store(folder / "climate.zarr")
    item = samples[rows]
    return samples, item, to_batch(item, static_channels(ds["lat"].values, ds["lon"].values))


def test_implied_and_generated_agree_with_the_xarray_reference(store: Path) -> None:
    judge = ForcingResponse.from_store(store / "climate.zarr")
    rows = [0, 30, 85, 86 + 40]
    samples, item, (target, forcing) = _batch(store, rows)
    ds = open_climate_store(store / "climate.zarr")
    view = scenario_view(ds, "ssp245")
    years = item["year"].numpy()
    reference = fit_global_response(ds, ["historical", "hist-aer"]).predict(global_forcers(view).sel(time=years))
    np.testing.assert_allclose(judge.implied(forcing).numpy(), reference.values, rtol=1e-5)
    members = item["member"].numpy()
    field = view["tas"].values[members, years - view["time"].values[0]]
    reference_mean = area_mean(view["tas"]).values[members, years - view["time"].values[0]]
    assert field.shape == (4, 6, 8)
    np.testing.assert_allclose(judge.generated(target).numpy(), reference_mean, rtol=1e-5, atol=1e-6)


def test_reward_is_minus_the_kelvin_distance_to_the_implied_response(store: Path) -> None:
    judge = ForcingResponse.from_store(store / "climate.zarr")
    _, _, (target, forcing) = _batch(store, [3, 50, 90])
    implied = judge.implied(forcing)
    exact = target.clone()
    exact[:, 0] = ((implied - judge.tas_mean) / judge.tas_std).float()[:, None, None]
    torch.testing.assert_close(global_mean_response(exact, forcing, store), torch.zeros(3), atol=1e-4, rtol=0)
    warmer = exact.clone()
    warmer[:, 0] += 1.0 / judge.tas_std
    torch.testing.assert_close(global_mean_response(warmer, forcing, store), -torch.ones(3), atol=1e-4, rtol=0)
    real = global_mean_response(target, forcing, store)
    assert torch.isfinite(real).all() and (real <= 0).all()
    assert resolve_reward("global_mean_response", "climate", "x").fn is global_mean_response

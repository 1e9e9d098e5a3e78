"""Offline builder: FaIR calibration, forcing bookkeeping, determinism, store layout, and the loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from helpers import RecordedBars

from diffpipe.errors import DataError
from diffpipe.tasks.data.climate import (
    ClimateBuildOptions,
    ClimateSamples,
    batch_loader,
    build_climate_store,
    forcing,
    open_climate_store,
    scenario_view,
    spatial,
)

SMALL = ClimateBuildOptions(
    nlat=6,
    nlon=8,
    members=2,
    scenarios=("historical", "hist-aer", "ssp245"),
    stats_scenarios=("historical", "hist-aer"),
    dask_workers=0,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small store shared by the layout and loader tests."""
    return build_climate_store(tmp_path_factory.mktemp("climate") / "store.zarr", SMALL)


def test_fair_energy_balance_model_hits_ecs_and_tcr() -> None:
    model = forcing.ebm(3.0, 1.8)
    model.emergent_parameters()
    assert model.ecs == pytest.approx(3.0, abs=1e-6)
    assert model.tcr == pytest.approx(1.8, abs=1e-6)


def test_rcmip_pathways() -> None:
    ghg, aer, hist = forcing.pathway("hist-GHG"), forcing.pathway("hist-aer"), forcing.pathway("historical")
    assert np.all(ghg.so2_emissions == 0) and np.all(aer.co2_emissions == 0)
    np.testing.assert_allclose(aer.erf_total, hist.erf_aerosol)
    assert hist.erf_total[-1] > 2.0 and hist.erf_aerosol[-1] < -0.8  # RCMIP 2014: ~2.2 total, ~-1.3 aerosols
    co2, ch4 = forcing.pathway("ssp585").scalar_inputs().T
    assert (
        np.all(np.diff(co2) > 0) and 8000 < co2[-1] < 11000
    )  # cumulative GtCO2 since 1850 (ClimateBench: ~9500)
    assert 0.3 < ch4[0] < 0.5  # GtCH4 / yr in 2015


def test_emission_maps_integrate_to_the_global_total() -> None:
    lat, lon = spatial.climatebench_grid(24, 36)
    totals = np.array([100.0, 50.0])
    maps = spatial.emission_maps(lat, lon, np.array([1900, 2050]), totals, "SO2")
    integral = (
        (maps * spatial.cell_area(lat, lon)).sum(axis=(1, 2)) * spatial.SECONDS_PER_YEAR / spatial.KG_PER_MT
    )
    np.testing.assert_allclose(integral, totals, rtol=1e-6)


def test_global_mean_of_fields_follows_fair(store: Path) -> None:
    view = scenario_view(open_climate_store(store), "ssp245")
    tas = view["tas"].sel(time=slice(2080, 2100)).mean(("member", "time")).values
    glob = float(spatial.area_mean(tas, view["lat"].values))
    response = [
        forcing.global_response("ssp245", m, 0, 3.0, 1.8, 0.5, 0.5).total[-21:].mean() for m in range(2)
    ]
    assert abs(glob - np.mean(response)) < 0.3  # local variability adds a little on a 6 x 8 grid
    assert 2.0 < glob < 3.5


def test_layout_and_contents(store: Path) -> None:
    ds = open_climate_store(store)
    assert ds.attrs["scenarios"] == ["historical", "hist-aer", "ssp245"]
    assert ds["outputs"].encoding["chunks"] == (16, 4, 6, 8)
    assert ds["forcing_maps"].encoding["chunks"] == (16, 2, 6, 8)
    assert ds.sizes["record"] == 2 * (165 + 165 + 86)
    hist, aer, ssp = (scenario_view(ds, s) for s in ds.attrs["scenarios"])
    assert hist["tas"].dims == ("member", "time", "lat", "lon") and ssp["time"].values[[0, -1]].tolist() == [
        2015,
        2100,
    ]
    assert float(aer["CO2"].max()) == 0.0 and float(aer["SO2"].max()) > 0.0
    assert float(aer["tas"].sel(time=slice(1990, 2014)).mean()) < 0.0  # aerosols alone cool
    assert hist["tas"].attrs["units"] == "K" and hist["pr"].attrs["units"] == "mm day-1"
    assert not np.isnan(ds["outputs"].values).any()
    assert ds["outputs_std"].values.min() > 0
    assert ds.attrs["stats_scenarios"] == ["historical", "hist-aer"]


def test_builder_is_deterministic(store: Path, tmp_path: Path) -> None:
    bars = RecordedBars()
    again = build_climate_store(tmp_path / "again.zarr", SMALL, bars)
    assert bars.done("store tasks") == bars.totals["store tasks"] > len(SMALL.scenarios) * SMALL.members
    for name in ("outputs", "forcing_maps", "forcing_global", "outputs_mean"):
        np.testing.assert_array_equal(
            zarr.open_array(f"{store}/{name}")[:], zarr.open_array(f"{again}/{name}")[:]
        )


def test_members_differ_and_ssp_members_branch_from_history(store: Path) -> None:
    ds = open_climate_store(store)
    hist, ssp = scenario_view(ds, "historical")["tas"].values, scenario_view(ds, "ssp245")["tas"].values
    assert np.abs(ssp[0] - ssp[1]).mean() > 0.05
    ocean = ~spatial.land_mask(*spatial.climatebench_grid(6, 8))
    last_hist, first_ssp = (hist[0, -1] - hist[1, -1])[ocean], (ssp[0, 0] - ssp[1, 0])[ocean]
    assert np.corrcoef(last_hist, first_ssp)[0, 1] > 0.5  # member differences persist across 2014 -> 2015


def test_monthly_store_averages_to_the_yearly_store(store: Path, tmp_path: Path) -> None:
    options = dataclasses.replace(SMALL, months_per_year=12, scenarios=("historical", "ssp245"),
                                  stats_scenarios=("historical",))
    monthly = open_climate_store(build_climate_store(tmp_path / "monthly.zarr", options))
    yearly = open_climate_store(store)
    assert monthly.attrs["months_per_year"] == 12 and monthly.sizes["record"] == 2 * (165 + 86) * 12
    for scenario in ("historical", "ssp245"):
        months, years = scenario_view(monthly, scenario), scenario_view(yearly, scenario)
        assert months["tas"].dims == ("member", "time", "month", "lat", "lon")
        for var in ("tas", "diurnal_temperature_range", "pr", "pr90"):
            np.testing.assert_allclose(months[var].mean("month").values, years[var].values, rtol=1e-5, atol=2e-6)
        np.testing.assert_array_equal(months["SO2"].values, years["SO2"].values)  # forcing stays yearly
        spread = float(months["tas"].std("month").mean())
        assert spread > 2 * float(years["tas"].diff("time").std()) / np.sqrt(2)  # months vary more than years
    north = monthly["lat"].values > 45
    tas = scenario_view(monthly, "ssp245")["tas"].sel(time=slice(2080, 2100)).mean(("member", "time", "lon"))
    assert (tas.sel(month=1).values[north] > tas.sel(month=7).values[north]).all()  # Arctic warming peaks in winter


def test_unknown_scenario_option(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown scenario"):
        build_climate_store(tmp_path / "x.zarr", ClimateBuildOptions(scenarios=("ssp999",), dask_workers=0))
    assert not (tmp_path / "x.zarr").exists()


def test_loader_reads_normalised_samples(store: Path) -> None:
    ds = open_climate_store(store)
    samples = ClimateSamples(store, ["ssp245"], history=3)
    assert len(samples) == 2 * 86
    one = samples[5]
    record = int(samples.records[5])
    raw = ds["outputs"].isel(record=record).values
    expected = (raw - ds["outputs_mean"].values[:, None, None]) / ds["outputs_std"].values[:, None, None]
    np.testing.assert_allclose(one["target"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert one["maps"].shape == (6, 6, 8) and one["scalars"].shape == (6,)
    assert int(one["year"]) == 2020 and int(one["member"]) == 0
    torch.testing.assert_close(
        samples.denormalise(one["target"]), torch.from_numpy(raw), rtol=1e-5, atol=1e-6
    )
    first = samples[0]  # 2015: history clamps to the scenario's first year
    torch.testing.assert_close(first["maps"][:2], first["maps"][4:])


def test_batches_equal_single_samples(store: Path) -> None:
    samples = ClimateSamples(store, ["historical", "ssp245"])
    batch = samples[[7, 3, 400]]
    for i, j in enumerate([7, 3, 400]):
        torch.testing.assert_close(batch["target"][i], samples[j]["target"])
        torch.testing.assert_close(batch["maps"][i], samples[j]["maps"])
    seen = sum(b["target"].shape[0] for b in batch_loader(samples, batch_size=64, seed=1))
    assert seen == len(samples)


def test_spatial_area_mean_skips_nan_cells_without_bias() -> None:
    lat = np.linspace(-90.0, 90.0, 7)
    field = np.full((2, 7, 8), 3.0)
    field[0, 3, :4] = np.nan
    np.testing.assert_allclose(spatial.area_mean(field, lat), [3.0, 3.0], rtol=1e-12)

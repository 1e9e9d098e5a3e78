"""Ingest of ClimateBench-layout netCDF files: round trip, fsspec sources and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from climate_helpers import MEMBERS, SCENARIO_YEARS, climatebench_pair, write_pair

from diffpipe.errors import DataError
from diffpipe.tasks.data.climate import ClimateSamples, ingest_climatebench, open_climate_store, scenario_view
from diffpipe.tasks.data.climate import ingest as ingest_module
from diffpipe.tasks.data.climate.domain import check_yearly


def _assert_round_trip(store: Path, folder: Path) -> None:
    ds = open_climate_store(store)
    assert ds.attrs["scenarios"] == list(SCENARIO_YEARS)
    assert ds["outputs"].encoding["chunks"] == (16, 4, ds.sizes["lat"], ds.sizes["lon"])
    for name in SCENARIO_YEARS:
        view = scenario_view(ds, name)
        inputs, outputs = (xr.open_dataset(folder / f"{k}_{name}.nc") for k in ("inputs", "outputs"))
        for var in ("tas", "diurnal_temperature_range", "pr", "pr90"):
            np.testing.assert_array_equal(view[var].values, outputs[var].values.astype(np.float32))
            assert view[var].attrs == outputs[var].attrs
        for var in ("CO2", "CH4", "SO2", "BC"):  # float64 in the files, float32 in the store
            np.testing.assert_array_equal(view[var].values, inputs[var].values.astype(np.float32))
            assert view[var].attrs == inputs[var].attrs
        np.testing.assert_array_equal(ds["lat"].values, inputs["latitude"].values)
        np.testing.assert_array_equal(ds["lon"].values, inputs["longitude"].values)
        np.testing.assert_array_equal(view["time"].values, outputs["time"].values)
        assert view.attrs["source_model"] == "synthetic"
    assert ds["lat"].attrs["standard_name"] == "latitude"


def test_round_trip_netcdf3(climatebench_dir: Path, tmp_path: Path) -> None:
    store = ingest_climatebench(climatebench_dir, tmp_path / "store.zarr")
    _assert_round_trip(store, climatebench_dir)


def test_statistics_exclude_the_test_scenario(climatebench_dir: Path, tmp_path: Path) -> None:
    ds = open_climate_store(ingest_climatebench(climatebench_dir, tmp_path / "store.zarr"))
    assert ds.attrs["stats_scenarios"] == ["historical", "ssp126"]
    train = xr.concat(
        [scenario_view(ds, s)["tas"].stack(s=("member", "time")) for s in ("historical", "ssp126")], dim="s"
    )
    np.testing.assert_allclose(ds["outputs_mean"].sel(variable="tas"), float(train.mean()), rtol=1e-5)
    np.testing.assert_allclose(ds["outputs_std"].sel(variable="tas"), float(train.std()), rtol=1e-5)


def test_netcdf4_through_fsspec_uri(tmp_path: Path) -> None:
    folder = tmp_path / "nc4"
    folder.mkdir()
    for i, name in enumerate(SCENARIO_YEARS):
        write_pair(folder, name, climatebench_pair(name, seed=i), engine="h5netcdf")
    store = ingest_climatebench(f"file://{folder}", tmp_path / "store.zarr")
    _assert_round_trip(store, folder)


def test_scenario_subset_and_member_dimension(climatebench_dir: Path, tmp_path: Path) -> None:
    ds = open_climate_store(ingest_climatebench(climatebench_dir, tmp_path / "s.zarr", scenarios=["ssp245"]))
    assert ds.attrs["scenarios"] == ["ssp245"]
    assert scenario_view(ds, "ssp245")["tas"].sizes["member"] == MEMBERS


def _expect_error(folder: Path, tmp_path: Path, *fragments: str, **kwargs: object) -> None:
    dest = tmp_path / "bad.zarr"
    with pytest.raises(DataError) as err:
        ingest_climatebench(folder, dest, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.zarr")]


def _rewrite(folder: Path, name: str, kind: str, edit) -> None:
    pair = list(climatebench_pair(name, seed=list(SCENARIO_YEARS).index(name)))
    index = 0 if kind == "inputs" else 1
    pair[index] = edit(pair[index])
    write_pair(folder, name, tuple(pair))


def test_missing_variable(climatebench_dir: Path, tmp_path: Path) -> None:
    _rewrite(climatebench_dir, "ssp126", "outputs", lambda ds: ds.drop_vars("pr90"))
    _expect_error(climatebench_dir, tmp_path, "outputs_ssp126.nc", "'pr90'", "missing variable")


def test_files_are_in_the_published_layout(climatebench_dir: Path) -> None:
    inputs = xr.open_dataset(climatebench_dir / "inputs_historical.nc")
    outputs = xr.open_dataset(climatebench_dir / "outputs_historical.nc")
    assert inputs["SO2"].dims == ("time", "latitude", "longitude") and inputs["SO2"].dtype == np.float64
    assert outputs["tas"].dims == ("member", "time", "lat", "lon") and outputs["tas"].dtype == np.float32
    assert outputs["pr"].dtype == np.float64 and "quantile" in outputs.coords


def test_grid_mismatch_names_the_odd_inputs_file(climatebench_dir: Path, tmp_path: Path) -> None:
    shifted = lambda ds: ds.assign_coords(longitude=ds["longitude"] + 1.0)  # noqa: E731
    _rewrite(climatebench_dir, "historical", "inputs", shifted)
    dest = tmp_path / "bad.zarr"
    with pytest.raises(DataError) as err:
        ingest_climatebench(climatebench_dir, dest)
    assert err.value.where.endswith("inputs_historical.nc coordinate 'longitude'")
    assert err.value.problem == "grid mismatch"
    assert err.value.found == "6 values 1..301"
    assert err.value.expected.startswith("6 values 0..300 as in ") and "outputs_" in err.value.expected
    assert not dest.exists()


def test_grid_mismatch_names_the_odd_outputs_file(climatebench_dir: Path, tmp_path: Path) -> None:
    _rewrite(climatebench_dir, "ssp126", "outputs", lambda ds: ds.assign_coords(lat=ds["lat"] * 0.5))
    _expect_error(climatebench_dir, tmp_path, "outputs_ssp126.nc coordinate 'lat'", "grid mismatch",
                  "found 4 values -45..45")


def test_wrong_map_dimensions_are_named_as_in_the_file(climatebench_dir: Path, tmp_path: Path) -> None:
    _rewrite(climatebench_dir, "ssp126", "inputs", lambda ds: ds.assign(SO2=ds["SO2"].isel(time=0)))
    _expect_error(climatebench_dir, tmp_path, "inputs_ssp126.nc variable 'SO2'", "wrong dimensions",
                  "('time', 'latitude', 'longitude')", "found ('latitude', 'longitude')")


def test_missing_grid_axis(climatebench_dir: Path, tmp_path: Path) -> None:
    _rewrite(climatebench_dir, "ssp245", "inputs", lambda ds: ds.rename(longitude="x"))
    _expect_error(climatebench_dir, tmp_path, "inputs_ssp245.nc dimension 'lon'", "missing grid axis",
                  "'lon' or 'longitude'")


def test_unknown_scenario_in_file_name(climatebench_dir: Path, tmp_path: Path) -> None:
    write_pair(climatebench_dir, "sspXYZ", climatebench_pair("ssp245", seed=9))
    _expect_error(climatebench_dir, tmp_path, "inputs_sspXYZ.nc", "unknown scenario 'sspXYZ'")


def test_requested_scenario_absent(climatebench_dir: Path, tmp_path: Path) -> None:
    _expect_error(climatebench_dir, tmp_path, "unknown scenario 'ssp585'", scenarios=["ssp585"])


def test_missing_partner_file(climatebench_dir: Path, tmp_path: Path) -> None:
    (climatebench_dir / "outputs_ssp126.nc").unlink()
    _expect_error(climatebench_dir, tmp_path, "outputs_ssp126.nc", "missing file")


@pytest.mark.parametrize("bad_value", [np.nan, 1e20])
def test_nan_and_fill_values(climatebench_dir: Path, tmp_path: Path, bad_value: float) -> None:
    def poison(ds: xr.Dataset) -> xr.Dataset:
        ds["SO2"].values[2, 1, 3] = bad_value
        return ds

    _rewrite(climatebench_dir, "ssp245", "inputs", poison)
    _expect_error(climatebench_dir, tmp_path, "inputs_ssp245.nc", "'SO2'", "NaN or fill", "1 bad values")


def test_non_monotonic_time(climatebench_dir: Path, tmp_path: Path) -> None:
    def shuffle(ds: xr.Dataset) -> xr.Dataset:
        return ds.isel(time=[0, 2, 1, 3, 4])

    _rewrite(climatebench_dir, "ssp126", "outputs", shuffle)
    _expect_error(climatebench_dir, tmp_path, "outputs_ssp126.nc", "'time'", "not strictly increasing")


def test_failure_while_writing_leaves_nothing(
    climatebench_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> None:
        raise DataError("statistics", "simulated failure")

    monkeypatch.setattr(ingest_module, "write_statistics", boom)
    _expect_error(climatebench_dir, tmp_path, "simulated failure")


@pytest.fixture
def monthly_dir(tmp_path: Path) -> Path:
    """The three scenarios with monthly outputs (yearly inputs), netCDF4."""
    folder = tmp_path / "monthly"
    folder.mkdir()
    for i, name in enumerate(SCENARIO_YEARS):
        write_pair(folder, name, climatebench_pair(name, seed=i, monthly=True), engine="h5netcdf")
    return folder


def test_monthly_outputs_are_twelve_records_a_year(monthly_dir: Path, climatebench_dir: Path, tmp_path: Path) -> None:
    outputs = xr.open_dataset(monthly_dir / "outputs_ssp126.nc")
    assert outputs["tas"].dims == ("member", "time", "lat", "lon") and outputs["time"].dt.month.values[13] == 2
    ds = open_climate_store(ingest_climatebench(monthly_dir, tmp_path / "store.zarr", chunk_records=12))
    assert ds.attrs["months_per_year"] == 12
    assert ds.sizes["record"] == MEMBERS * 12 * sum(n for _, n in SCENARIO_YEARS.values())
    assert ds.sizes["step"] == sum(n for _, n in SCENARIO_YEARS.values())  # the forcing stays yearly
    for name, (start, years) in SCENARIO_YEARS.items():
        view = scenario_view(ds, name)
        source = xr.open_dataset(monthly_dir / f"outputs_{name}.nc")
        assert view["tas"].dims == ("member", "time", "month", "lat", "lon")
        np.testing.assert_array_equal(view["time"].values, np.arange(start, start + years))
        for var in ("tas", "pr"):
            monthly = source[var].values.astype(np.float32).reshape(MEMBERS, years, 12, *source[var].shape[2:])
            np.testing.assert_array_equal(view[var].values, monthly)
    samples = ClimateSamples(tmp_path / "store.zarr", ["ssp126"])
    rec = samples.records
    assert len(samples) == MEMBERS * 5 * 12
    assert ds["record_month"].values[rec][:14].tolist() == [*range(1, 13), 1, 2]
    march_2017 = int(np.flatnonzero((samples.record_year[rec] == 2017) & (ds["record_month"].values[rec] == 3))[0])
    item = samples[march_2017]  # a month is conditioned on its year's forcing
    inputs = xr.open_dataset(monthly_dir / "inputs_ssp126.nc")
    so2 = (inputs["SO2"].sel(time=2017).values.astype(np.float32) - samples.map_mean[0]) / samples.map_std[0]
    np.testing.assert_allclose(item["maps"][0].numpy(), so2, rtol=1e-6)
    tas = outputs["tas"].values[0, 2 * 12 + 2]  # member 0, March of the third year (2017)
    np.testing.assert_allclose(samples.denormalise(item["target"])[0].numpy(), tas, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError) as err:  # the emulators are yearly: a monthly store serves the loaders only
        check_yearly(ds)
    assert err.value.where == "data.source" and err.value.exit_code == 2 and "12 records per year" in err.value.found
    check_yearly(open_climate_store(ingest_climatebench(climatebench_dir, tmp_path / "yearly.zarr")))


def test_monthly_time_with_a_missing_month(monthly_dir: Path, tmp_path: Path) -> None:
    dropped = lambda ds: ds.drop_isel(time=14)  # noqa: E731  (March of the second year)
    pair = climatebench_pair("ssp126", seed=1, monthly=True)
    write_pair(monthly_dir, "ssp126", (pair[0], dropped(pair[1])), engine="h5netcdf")
    _expect_error(monthly_dir, tmp_path, "outputs_ssp126.nc variable 'time'", "every month of each year",
                  "2016-04 at index 14")


def test_yearly_and_monthly_outputs_mixed(monthly_dir: Path, tmp_path: Path) -> None:
    write_pair(monthly_dir, "ssp245", climatebench_pair("ssp245", seed=2), engine="h5netcdf")
    _expect_error(monthly_dir, tmp_path, "outputs_ssp245.nc variable 'time'", "yearly and monthly outputs mixed",
                  "found yearly")

"""Small synthetic files in ClimateBench v1's published layout, written with scipy (netCDF3) or h5netcdf (netCDF4).

As published: `inputs_<scenario>.nc` holds CO2, CH4 (time) and SO2, BC (time, latitude, longitude) in
float64 on dimensions `time`, `latitude`, `longitude`; `outputs_<scenario>.nc` holds tas and
diurnal_temperature_range (float32) and pr, pr90 (float64, kg m-2 s-1) on `member`, `time`, `lat`, `lon`,
with the scalar `quantile` coordinate left behind by the pr90 computation. Time is integer years. Monthly
outputs (`monthly=True`) keep that layout with one CF date per month (mid-month) on `time`; the inputs
stay yearly, as the forcing is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

NLAT, NLON, MEMBERS = 4, 6, 2
SCENARIO_YEARS = {"historical": (1850, 6), "ssp126": (2015, 5), "ssp245": (2015, 5)}
KG_M2_S_PER_MM_DAY = 1.0 / 86400.0


def grid() -> tuple[np.ndarray, np.ndarray]:
    """Latitudes -90..90 including the poles and longitudes 0..360 exclusive (ClimateBench's convention)."""
    return np.linspace(-90, 90, NLAT), np.arange(NLON) * 360.0 / NLON


def inputs_file(name: str, rng: np.random.Generator) -> xr.Dataset:
    """An inputs file: global CO2, CH4 series and SO2, BC maps on (time, latitude, longitude)."""
    start, n = SCENARIO_YEARS[name]
    lat, lon = grid()
    maps = ("time", "latitude", "longitude")
    return xr.Dataset(
        {
            "CO2": ("time", np.cumsum(rng.uniform(10, 40, n)), {"units": "GtCO2"}),
            "CH4": ("time", rng.uniform(0.2, 0.4, n), {"units": "GtCH4 / yr"}),
            "SO2": (maps, rng.uniform(0, 1e-11, (n, NLAT, NLON)), {"units": "kg m-2 s-1"}),
            "BC": (maps, rng.uniform(0, 1e-12, (n, NLAT, NLON)), {"units": "kg m-2 s-1"}),
        },
        coords={"time": np.arange(start, start + n), "latitude": lat, "longitude": lon},
        attrs={"title": f"inputs {name}"},
    )


def month_dates(start: int, years: int) -> np.ndarray:
    """Mid-month dates of every month of `years` years from `start`."""
    return np.array([f"{y}-{m:02d}-16" for y in range(start, start + years) for m in range(1, 13)],
                    dtype="datetime64[ns]")


def outputs_file(name: str, rng: np.random.Generator, monthly: bool = False) -> xr.Dataset:
    """An outputs file: tas, dtr (float32, K), pr, pr90 (float64, kg m-2 s-1) on (member, time, lat, lon),
    time in years or (`monthly`) in months."""
    start, n = SCENARIO_YEARS[name]
    lat, lon = grid()
    time = month_dates(start, n) if monthly else np.arange(start, start + n)
    dims, shape = ("member", "time", "lat", "lon"), (MEMBERS, time.size, NLAT, NLON)
    per_s = KG_M2_S_PER_MM_DAY
    outputs = xr.Dataset(
        {
            "tas": (dims, rng.normal(1, 0.5, shape).astype(np.float32),
                    {"units": "K", "long_name": "Near-Surface Air Temperature", "standard_name": "air_temperature"}),
            "diurnal_temperature_range": (dims, rng.normal(0, 0.1, shape).astype(np.float32), {"units": "K"}),
            "pr": (dims, rng.normal(0, 0.1, shape) * per_s, {"units": "kg m-2 s-1"}),
            "pr90": (dims, rng.normal(0, 0.3, shape) * per_s, {"units": "kg m-2 s-1"}),
        },
        coords={"time": time, "lat": lat, "lon": lon, "quantile": 0.9},
        attrs={"source_model": "synthetic"},
    )
    outputs["lat"].attrs = {"units": "degrees_north", "standard_name": "latitude"}
    return outputs


def climatebench_pair(name: str, seed: int, monthly: bool = False) -> tuple[xr.Dataset, xr.Dataset]:
    """An (inputs, outputs) pair with ClimateBench's variable names, dims, dtypes and CF attributes."""
    rng = np.random.default_rng(seed)
    return inputs_file(name, rng), outputs_file(name, rng, monthly)


def write_pair(folder: Path, name: str, pair: tuple[xr.Dataset, xr.Dataset], engine: str = "scipy") -> None:
    """Write inputs_<name>.nc and outputs_<name>.nc."""
    for kind, ds in zip(("inputs", "outputs"), pair, strict=True):
        ds.to_netcdf(folder / f"{kind}_{name}.nc", engine=engine)

"""Small synthetic files in ClimateBench's layout, written with scipy (netCDF3) or h5netcdf (netCDF4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

NLAT, NLON, MEMBERS = 4, 6, 2
SCENARIO_YEARS = {"historical": (1850, 6), "ssp126": (2015, 5), "ssp245": (2015, 5)}


def climatebench_pair(name: str, seed: int) -> tuple[xr.Dataset, xr.Dataset]:
    """An (inputs, outputs) pair with ClimateBench variable names, dims and CF attributes."""
    start, n = SCENARIO_YEARS[name]
    rng = np.random.default_rng(seed)
    coords = {
        "time": np.arange(start, start + n),
        "lat": np.linspace(-90, 90, NLAT),
        "lon": np.arange(NLON) * 360.0 / NLON,
    }
    inputs = xr.Dataset(
        {
            "CO2": ("time", np.cumsum(rng.uniform(10, 40, n)).astype(np.float32), {"units": "GtCO2"}),
            "CH4": ("time", rng.uniform(0.2, 0.4, n).astype(np.float32), {"units": "GtCH4 / yr"}),
            "SO2": (
                ("time", "lat", "lon"),
                rng.uniform(0, 1e-11, (n, NLAT, NLON)).astype(np.float32),
                {"units": "kg m-2 s-1"},
            ),
            "BC": (
                ("time", "lat", "lon"),
                rng.uniform(0, 1e-12, (n, NLAT, NLON)).astype(np.float32),
                {"units": "kg m-2 s-1"},
            ),
        },
        coords=coords,
        attrs={"title": f"inputs {name}"},
    )
    dims = ("member", "time", "lat", "lon")
    shape = (MEMBERS, n, NLAT, NLON)
    outputs = xr.Dataset(
        {
            "tas": (
                dims,
                rng.normal(1, 0.5, shape).astype(np.float32),
                {
                    "units": "K",
                    "long_name": "Near-Surface Air Temperature",
                    "standard_name": "air_temperature",
                },
            ),
            "diurnal_temperature_range": (dims, rng.normal(0, 0.1, shape).astype(np.float32), {"units": "K"}),
            "pr": (dims, rng.normal(0, 0.1, shape).astype(np.float32), {"units": "mm day-1"}),
            "pr90": (dims, rng.normal(0, 0.3, shape).astype(np.float32), {"units": "mm day-1"}),
        },
        coords=coords | {"member": np.arange(MEMBERS)},
        attrs={"source_model": "synthetic"},
    )
    outputs["lat"].attrs = {"units": "degrees_north", "standard_name": "latitude"}
    return inputs, outputs


def write_pair(folder: Path, name: str, pair: tuple[xr.Dataset, xr.Dataset], engine: str = "scipy") -> None:
    """Write inputs_<name>.nc and outputs_<name>.nc."""
    for kind, ds in zip(("inputs", "outputs"), pair, strict=True):
        ds.to_netcdf(folder / f"{kind}_{name}.nc", engine=engine)

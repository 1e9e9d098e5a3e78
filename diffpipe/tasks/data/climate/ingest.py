"""Ingest real ClimateBench files (`inputs_<scenario>.nc`, `outputs_<scenario>.nc`) into one climate store."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from diffpipe.errors import DataError

from ...context import ProgressBars, no_progress
from ...dask_progress import compute
from .layout import (
    CHUNK_RECORDS,
    GLOBAL_FORCERS,
    KNOWN_SCENARIOS,
    MAP_FORCERS,
    OUTPUT_VARIABLES,
    TEST_SCENARIO,
    ScenarioData,
    create_store,
    plan_layout,
    staged_store,
    store_writes,
    template,
    write_statistics,
)

FILE_PATTERN = re.compile(r"^(inputs|outputs)_(.+)\.nc$")
FILL_THRESHOLD = 1e19
TIME_BLOCK = 16
GRID_TOLERANCE_DEG = 1e-5


@dataclass
class ScenarioFiles:
    """The opened, validated pair of files of one scenario (outputs with dims member, time, lat, lon)."""

    name: str
    inputs_path: str
    outputs_path: str
    inputs: xr.Dataset
    outputs: xr.Dataset
    years: np.ndarray
    months: int
    """Records per year of the outputs: 1 (yearly means) or 12 (monthly means)."""
    grids: tuple[GridOf, GridOf]
    """(inputs, outputs) grids, checked across every file once all scenarios are open."""


def find_scenarios(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict[str, str]]:
    """Map scenario name -> {"inputs": path, "outputs": path} from the file names under `root`."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(fs.ls(root, detail=False)):
        match = FILE_PATTERN.match(Path(path).name)
        if match:
            found.setdefault(match.group(2), {})[match.group(1)] = path
    return found


def _check_pairs(
    source: str, found: dict[str, dict[str, str]], wanted: Sequence[str] | None, known: Sequence[str]
) -> list[str]:
    if not found:
        raise DataError(
            source, "no ClimateBench files", expected="inputs_<scenario>.nc and outputs_<scenario>.nc"
        )
    for name, files in found.items():
        for kind in ("inputs", "outputs"):
            if kind not in files:
                raise DataError(
                    f"{source}/{kind}_{name}.nc",
                    "missing file",
                    expected=f"a {kind} file for '{name}'",
                    found=f"only {next(iter(files.values()))}",
                )
        if name not in known:
            raise DataError(
                files["inputs"], f"unknown scenario '{name}'", expected=", ".join(known), found=name
            )
    names = list(wanted) if wanted is not None else sorted(found, key=lambda s: (list(known).index(s), s))
    for name in names:
        if name not in found:
            raise DataError(
                source, f"unknown scenario '{name}'", expected=", ".join(sorted(found)), found=name
            )
    return names


def _engine(head: bytes, path: str) -> str:
    if head.startswith(b"CDF"):
        return "scipy"
    if head.startswith(b"\x89HDF"):
        return "h5netcdf"
    raise DataError(path, "not a netCDF file", expected="netCDF3 or netCDF4/HDF5", found=repr(head[:8]))


def open_netcdf(
    fs: fsspec.AbstractFileSystem, path: str, stack: ExitStack, chunks: dict[str, int]
) -> xr.Dataset:
    """Open a netCDF3 (scipy) or netCDF4 (h5netcdf) file lazily from any fsspec filesystem."""
    with fs.open(path, "rb") as f:
        engine = _engine(f.read(8), path)
    target: Any = path if isinstance(fs, LocalFileSystem) else stack.enter_context(fs.open(path, "rb"))
    ds = xr.open_dataset(target, engine=engine, chunks=chunks)
    stack.callback(ds.close)
    return ds


def _years(ds: xr.Dataset, path: str) -> np.ndarray:
    if "time" not in ds.coords:
        raise DataError(f"{path} variable 'time'", "missing variable", expected="a time coordinate")
    time = ds["time"]
    years = (
        time.dt.year.values
        if hasattr(time, "dt") and not np.issubdtype(time.dtype, np.number)
        else time.values
    )
    if not np.allclose(years, np.round(years)):
        raise DataError(f"{path} variable 'time'", "time is not in whole years", found=str(years[:5]))
    years = np.round(years).astype(np.int64)
    bad = np.flatnonzero(np.diff(years) <= 0)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path} variable 'time'",
            "time is not strictly increasing",
            expected="increasing years",
            found=f"{years[i]} then {years[i + 1]} at index {i + 1}",
        )
    return years


def _output_years(ds: xr.Dataset, path: str) -> tuple[np.ndarray, int]:
    """(years, months per year) of an outputs file: whole years, or dates of every month of each year in order."""
    time = ds["time"] if "time" in ds.coords else None
    dated = time is not None and hasattr(time, "dt") and not np.issubdtype(time.dtype, np.number)
    if not dated or np.unique(time.dt.year.values).size == time.size:
        return _years(ds, path), 1
    years, months = time.dt.year.values.astype(np.int64), time.dt.month.values.astype(np.int64)
    n = years.size
    calendar = np.repeat(years[::12], 12)[:n], np.tile(np.arange(1, 13), n // 12 + 1)[:n]
    bad = np.flatnonzero((years != calendar[0]) | (months != calendar[1]))
    if bad.size or n % 12:
        i = int(bad[0]) if bad.size else n - 1
        raise DataError(f"{path} variable 'time'", "monthly time is not every month of each year in order",
                        expected="January..December of consecutive years",
                        found=f"{years[i]}-{months[i]:02d} at index {i} of {n}")
    return _years(ds.isel(time=slice(None, None, 12)), path), 12


def _require(
    ds: xr.Dataset, path: str, names: Sequence[str], dims: dict[str, tuple[str, ...]], grid: dict[str, str]
) -> None:
    """Every variable present with its dims (named as the file names them: `grid` maps lat/lon back)."""
    def spelled(d: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(grid.get(x, x) for x in d)

    for name in names:
        if name not in ds.data_vars:
            raise DataError(
                f"{path} variable '{name}'",
                "missing variable",
                expected=", ".join(names),
                found=", ".join(map(str, ds.data_vars)),
            )
        if set(ds[name].dims) != set(dims[name]):
            raise DataError(
                f"{path} variable '{name}'",
                "wrong dimensions",
                expected=str(spelled(dims[name])),
                found=str(spelled(tuple(map(str, ds[name].dims)))),
            )


GRID_NAMES = {"lat": ("lat", "latitude"), "lon": ("lon", "longitude")}
"""Accepted spellings of each grid axis: ClimateBench's inputs use latitude/longitude, its outputs lat/lon."""


def _grid_names(ds: xr.Dataset, path: str) -> dict[str, str]:
    """The file's own name of each grid axis (`lat` -> `latitude` in ClimateBench inputs)."""
    names = {}
    for axis, spellings in GRID_NAMES.items():
        present = [n for n in spellings if n in ds.dims]
        if len(present) != 1:
            raise DataError(
                f"{path} dimension '{axis}'",
                "no unique grid axis" if present else "missing grid axis",
                expected=" or ".join(f"'{n}'" for n in spellings),
                found=", ".join(map(str, ds.dims)),
            )
        names[axis] = present[0]
    return names


def _canonical_grid(ds: xr.Dataset, path: str) -> tuple[xr.Dataset, dict[str, str]]:
    """`ds` with its grid axes renamed to lat/lon, and the names the file used."""
    names = _grid_names(ds, path)
    return ds.rename({v: k for k, v in names.items() if k != v}), names


@dataclass(frozen=True)
class GridOf:
    """One file's grid: its path, lat/lon values and the names it calls them by."""

    path: str
    names: dict[str, str]
    lat: np.ndarray
    lon: np.ndarray

    def axis(self, axis: str) -> np.ndarray:
        """Values of `lat` or `lon`."""
        return self.lat if axis == "lat" else self.lon


def _describe(values: np.ndarray) -> str:
    return f"{values.size} values {float(values[0]):g}..{float(values[-1]):g}"


def _agrees(a: np.ndarray, b: np.ndarray) -> bool:
    return a.size == b.size and bool(np.allclose(a, b, rtol=0.0, atol=GRID_TOLERANCE_DEG))


def check_grids(grids: Sequence[GridOf]) -> None:
    """DataError naming the first file whose lat/lon disagree with the grid most files share.

    The reference grid is the one the most files agree on (ties: the first file's), so the message
    names the odd file as `found` and a file holding the common grid as `expected`.
    """
    def votes(g: GridOf) -> int:
        return sum(_agrees(g.lat, o.lat) and _agrees(g.lon, o.lon) for o in grids)

    reference = max(grids, key=votes)
    for grid in grids:
        for axis in ("lat", "lon"):
            if not _agrees(grid.axis(axis), reference.axis(axis)):
                raise DataError(
                    f"{grid.path} coordinate '{grid.names[axis]}'",
                    "grid mismatch",
                    expected=f"{_describe(reference.axis(axis))} as in {reference.path}",
                    found=_describe(grid.axis(axis)),
                )


def grid_of(ds: xr.Dataset, path: str, names: dict[str, str]) -> GridOf:
    """The grid of an opened (renamed) file."""
    return GridOf(path, names, np.asarray(ds["lat"].values, np.float64), np.asarray(ds["lon"].values, np.float64))


def open_scenario(
    fs: fsspec.AbstractFileSystem, name: str, files: dict[str, str], stack: ExitStack
) -> ScenarioFiles:
    """Open one scenario's pair of files and check variables, dims and time (grids: `check_grids`).

    ClimateBench's inputs are on `latitude`/`longitude`, its outputs on `lat`/`lon`; either spelling is
    read and renamed to `lat`/`lon`.
    """
    ipath, opath = files["inputs"], files["outputs"]
    inputs, in_names = _canonical_grid(open_netcdf(fs, ipath, stack, {"time": TIME_BLOCK}), ipath)
    outputs, out_names = _canonical_grid(open_netcdf(fs, opath, stack, {"time": TIME_BLOCK}), opath)
    in_dims = {n: ("time",) for n in GLOBAL_FORCERS} | {n: ("time", "lat", "lon") for n in MAP_FORCERS}
    _require(inputs, ipath, GLOBAL_FORCERS + MAP_FORCERS, in_dims, in_names)
    if "member" not in outputs.dims:
        outputs = outputs.expand_dims("member")
    _require(outputs, opath, OUTPUT_VARIABLES,
             dict.fromkeys(OUTPUT_VARIABLES, ("member", "time", "lat", "lon")), out_names)
    years_in, (years_out, months) = _years(inputs, ipath), _output_years(outputs, opath)
    if not np.array_equal(years_in, years_out):
        raise DataError(
            f"{opath} vs {ipath} variable 'time'",
            "time mismatch between inputs and outputs",
            expected=f"{years_in[0]}..{years_in[-1]} ({years_in.size})",
            found=f"{years_out[0]}..{years_out[-1]} ({years_out.size})",
        )
    outputs = outputs.transpose("member", "time", "lat", "lon", ...)
    grids = (grid_of(inputs, ipath, in_names), grid_of(outputs, opath, out_names))
    return ScenarioFiles(name, ipath, opath, inputs, outputs, years_in, months, grids)


def check_resolution(scenarios: list[ScenarioFiles]) -> int:
    """Months per year shared by every outputs file (DataError naming the first file that differs)."""
    first = scenarios[0]
    for s in scenarios[1:]:
        if s.months != first.months:
            def kind(m: int) -> str:
                return "monthly" if m == 12 else "yearly"
            raise DataError(f"{s.outputs_path} variable 'time'", "yearly and monthly outputs mixed in one store",
                            expected=f"{kind(first.months)} as in {first.outputs_path}", found=kind(s.months))
    return first.months


def check_values(scenarios: list[ScenarioFiles], bars: ProgressBars = no_progress, client: Any = None) -> None:
    """Raise DataError on the first variable holding NaN, infinite or fill (|x| >= 1e19) values."""
    counts = {}
    for s in scenarios:
        for ds, path, names in (
            (s.inputs, s.inputs_path, GLOBAL_FORCERS + MAP_FORCERS),
            (s.outputs, s.outputs_path, OUTPUT_VARIABLES),
        ):
            for name in names:
                x = ds[name].data
                counts[(path, name)] = (~da.isfinite(x) | (abs(x) >= FILL_THRESHOLD)).sum()
    (computed,) = compute(counts, bars=bars, what="value checks", client=client)
    for (path, name), n in computed.items():
        if n:
            raise DataError(
                f"{path} variable '{name}'",
                "contains NaN or fill values",
                expected="finite values below 1e19",
                found=f"{int(n)} bad values",
            )


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = v
    return out


def _store_attrs(scenarios: list[ScenarioFiles], source: str) -> dict[str, Any]:
    first = scenarios[0]
    cf = {n: _jsonable(first.inputs[n].attrs) for n in GLOBAL_FORCERS + MAP_FORCERS}
    cf |= {n: _jsonable(first.outputs[n].attrs) for n in OUTPUT_VARIABLES}
    cf["time"] = _jsonable(first.outputs["time"].attrs)
    sources = {s.name: _jsonable(s.inputs.attrs) | _jsonable(s.outputs.attrs) for s in scenarios}
    return {
        "source": f"ClimateBench files from {source}",
        "cf_attributes": json.dumps(cf, sort_keys=True),
        "source_attributes": json.dumps(sources, sort_keys=True),
    }


def _grid_axis(ds: xr.Dataset, axis: str) -> xr.DataArray:
    return xr.DataArray(ds[axis].values.astype(np.float64), dims=axis, attrs=_jsonable(ds[axis].attrs))


def ingest_climatebench(
    source: str | Path,
    dest: Path,
    *,
    scenarios: Sequence[str] | None = None,
    stats_scenarios: Sequence[str] | None = None,
    known_scenarios: Sequence[str] = KNOWN_SCENARIOS,
    storage_options: dict[str, Any] | None = None,
    scheduler: str | None = None,
    client: Any = None,
    chunk_records: int = CHUNK_RECORDS,
    bars: ProgressBars = no_progress,
) -> Path:
    """Validate ClimateBench netCDF files under a directory or fsspec URI; write one climate store at `dest`.

    Everything is checked before anything is written; the store appears at `dest` only when complete.
    `stats_scenarios` default: every scenario except ssp245. `scheduler` is passed to `dask.compute`;
    with a distributed `client` the checks and writes run on its cluster.
    `chunk_records`: records (member-years, or member-months) per zarr chunk of the store. Outputs files
    whose `time` holds every month of each year are ingested as monthly records (12 per year and member)
    beside the yearly forcing of the inputs files; one store is either yearly or monthly. `bars` shows the
    Dask tasks of the value checks and of the store writes as they finish.
    """
    source = str(source)
    fs, root = fsspec.core.url_to_fs(source, **(storage_options or {}))
    found = find_scenarios(fs, root)
    names = _check_pairs(source, found, scenarios, known_scenarios)
    with ExitStack() as stack:
        opened = [open_scenario(fs, n, found[n], stack) for n in names]
        check_grids([g for s in opened for g in (s.grids[1], s.grids[0])])
        months = check_resolution(opened)
        check_values(opened, bars, client)
        plans = plan_layout([(s.name, s.years, s.outputs.sizes["member"]) for s in opened], months)
        stats = (
            list(stats_scenarios) if stats_scenarios else [n for n in names if n != TEST_SCENARIO] or names
        )
        lat, lon = _grid_axis(opened[0].outputs, "lat"), _grid_axis(opened[0].outputs, "lon")
        with staged_store(dest) as tmp:
            create_store(tmp, template(plans, lat, lon, _store_attrs(opened, source), chunk_records))
            scenarios = [
                ScenarioData(_member_fields(s.outputs), _maps(s.inputs),
                             np.stack([s.inputs[n].values for n in GLOBAL_FORCERS], axis=-1))
                for s in opened
            ]
            compute(*store_writes(tmp, scenarios), bars=bars, what="store tasks", scheduler=scheduler, client=client)
            write_statistics(tmp, stats)
    return Path(dest)


def _member_fields(outputs: xr.Dataset) -> list[xr.DataArray]:
    stacked = xr.concat([outputs[n] for n in OUTPUT_VARIABLES], dim="variable")
    stacked = stacked.transpose("member", "time", "variable", "lat", "lon").chunk({"variable": -1})
    return [stacked.isel(member=m) for m in range(stacked.sizes["member"])]


def _maps(inputs: xr.Dataset) -> xr.DataArray:
    stacked = xr.concat([inputs[n] for n in MAP_FORCERS], dim="forcer")
    return stacked.transpose("time", "forcer", "lat", "lon").chunk({"forcer": -1})

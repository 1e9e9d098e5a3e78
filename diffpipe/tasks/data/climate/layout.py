"""The climate store: one zarr v3 store holding every scenario, chunks of whole training samples.

Layout (`LAYOUT_VERSION`):

- `outputs (record, variable, lat, lon)`: the four ClimateBench output fields stacked as channels,
  chunk `(chunk_records, 4, nlat, nlon)`: whole samples, `chunk_records` consecutive records (years, or
  months of a monthly store, of a member, in scenario, member, time order) per chunk, stored
  uncompressed (noise-dominated float32 gains under 10% from zstd and costs the reader 3x), so a
  streaming reader decodes nothing. A record
  belongs to `record_scenario`, `record_member`, `record_year` (and `record_month`, 1..12, in a store
  whose attribute `months_per_year` is 12) and points at `record_step`, the step of its year.
- `forcing_maps (step, forcer, lat, lon)`: SO2 and BC emission maps per year (ClimateBench's forcing is
  annual, also beside monthly outputs), chunk `(chunk_records, 2, nlat, nlon)`.
- `forcing_global (step, scalar_forcer)`: cumulative CO2 and CH4 emissions, one chunk.
- `<name>_mean`, `<name>_std` per channel: normalisation statistics over `stats_scenarios`.
- Names of scenarios and channels live in attributes (CF `flag_values` / `flag_meanings` on the
  integer scenario coordinates); the CF attributes of every original variable are kept in
  `cf_attributes` and restored by `scenario_view`.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from diffpipe.errors import DataError

LAYOUT_VERSION = "diffpipe.climate/1"
OUTPUT_VARIABLES = ("tas", "diurnal_temperature_range", "pr", "pr90")
MAP_FORCERS = ("SO2", "BC")
GLOBAL_FORCERS = ("CO2", "CH4")
TEST_SCENARIO = "ssp245"
KNOWN_SCENARIOS = (
    "historical",
    "hist-GHG",
    "hist-aer",
    "hist-nat",
    "piControl",
    "1pctCO2",
    "abrupt-4xCO2",
    "ssp119",
    "ssp126",
    "ssp245",
    "ssp370",
    "ssp370-lowNTCF",
    "ssp434",
    "ssp460",
    "ssp534-over",
    "ssp585",
)
CHUNK_RECORDS = 16  # records (and steps) per chunk: 3.5 MB of outputs at 96 x 144
READ_BLOCK = 256  # records per Dask task when scanning the whole store (one zarr call reads them together)
STATS_FIELDS = {"outputs": "variable", "forcing_maps": "forcer", "forcing_global": "scalar_forcer"}


@dataclass(frozen=True)
class ScenarioPlan:
    """Where one scenario's years and members sit in the flat `record` and `step` axes."""

    name: str
    years: tuple[int, ...]
    members: int
    record_start: int
    step_start: int
    months: int = 1
    """Records per year and member: 1 (yearly means) or 12 (monthly means)."""

    @property
    def steps(self) -> int:
        """Number of years."""
        return len(self.years)

    @property
    def member_length(self) -> int:
        """Records of one member: its years, or its months."""
        return self.steps * self.months

    def member_records(self, member: int) -> slice:
        """Record slice of one member's years (or months)."""
        start = self.record_start + member * self.member_length
        return slice(start, start + self.member_length)

    @property
    def step_slice(self) -> slice:
        """Step slice of this scenario's years."""
        return slice(self.step_start, self.step_start + self.steps)


def plan_layout(scenarios: Sequence[tuple[str, Sequence[int], int]], months: int = 1) -> list[ScenarioPlan]:
    """Offsets of each (name, years, members) scenario in the record and step axes, in the given order,
    with `months` records per year and member (1: yearly, 12: monthly)."""
    plans, record, step = [], 0, 0
    for name, years, members in scenarios:
        plans.append(ScenarioPlan(name, tuple(int(y) for y in years), int(members), record, step, months))
        record += members * len(years) * months
        step += len(years)
    return plans


def _flag_attrs(names: Sequence[str]) -> dict[str, Any]:
    return {"flag_values": list(range(len(names))), "flag_meanings": " ".join(names)}


def _index_coords(plans: list[ScenarioPlan]) -> dict[str, tuple[str, np.ndarray, dict[str, Any]]]:
    names = [p.name for p in plans]
    rec_scn, rec_mem, rec_year, rec_step, step_scn, step_year = [], [], [], [], [], []
    for i, p in enumerate(plans):
        years = np.repeat(np.asarray(p.years), p.months)
        for m in range(p.members):
            rec_scn.append(np.full(p.member_length, i))
            rec_mem.append(np.full(p.member_length, m))
            rec_year.append(years)
            rec_step.append(np.repeat(np.arange(p.step_start, p.step_start + p.steps), p.months))
        step_scn.append(np.full(p.steps, i))
        step_year.append(np.asarray(p.years))
    flags = _flag_attrs(names)
    months = {}
    if plans[0].months > 1:
        month = np.concatenate([np.tile(np.arange(1, 13), p.steps * p.members) for p in plans]).astype(np.int8)
        months = {"record_month": ("record", month, {"long_name": "month of the year", "valid_range": [1, 12]})}
    return months | {
        "record_scenario": ("record", np.concatenate(rec_scn).astype(np.int16), flags),
        "record_member": (
            "record",
            np.concatenate(rec_mem).astype(np.int16),
            {"long_name": "ensemble member"},
        ),
        "record_year": ("record", np.concatenate(rec_year).astype(np.int32), {"units": "year"}),
        "record_step": ("record", np.concatenate(rec_step).astype(np.int32), {"long_name": "index on step"}),
        "step_scenario": ("step", np.concatenate(step_scn).astype(np.int16), flags),
        "step_year": ("step", np.concatenate(step_year).astype(np.int32), {"units": "year"}),
    }


def template(
    plans: list[ScenarioPlan], lat: xr.DataArray, lon: xr.DataArray, attrs: dict[str, Any],
    chunk_records: int = CHUNK_RECORDS,
) -> xr.Dataset:
    """A lazy, all-zero Dataset with the store's full shape, chunks, coordinates and attributes."""
    nrec = sum(p.members * p.member_length for p in plans)
    nstep = sum(p.steps for p in plans)
    ny, nx = lat.size, lon.size
    nv, nf, ng = len(OUTPUT_VARIABLES), len(MAP_FORCERS), len(GLOBAL_FORCERS)
    coords = {k: xr.Variable(*v) for k, v in _index_coords(plans).items()}
    coords |= {"lat": lat.variable, "lon": lon.variable}
    data = {
        "outputs": (
            ("record", "variable", "lat", "lon"),
            da.zeros((nrec, nv, ny, nx), chunks=(chunk_records, nv, ny, nx), dtype=np.float32),
            {"channel_names": list(OUTPUT_VARIABLES)},
        ),
        "forcing_maps": (
            ("step", "forcer", "lat", "lon"),
            da.zeros((nstep, nf, ny, nx), chunks=(chunk_records, nf, ny, nx), dtype=np.float32),
            {"channel_names": list(MAP_FORCERS)},
        ),
        "forcing_global": (
            ("step", "scalar_forcer"),
            da.zeros((nstep, ng), chunks=(nstep, ng), dtype=np.float32),
            {"channel_names": list(GLOBAL_FORCERS)},
        ),
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = {"layout": LAYOUT_VERSION, "scenarios": [p.name for p in plans],
                "months_per_year": plans[0].months} | attrs
    return ds


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    encoding: dict[str, dict[str, Any]] = {
        name: {"chunks": tuple(c[0] for c in ds[name].chunks)}
        for name in ("outputs", "forcing_maps", "forcing_global")
    }
    for name in ("outputs", "forcing_maps"):
        encoding[name]["compressors"] = None
    return encoding


def create_store(path: Path, ds: xr.Dataset) -> None:
    """Write the template's metadata and coordinates (no data chunks) as a zarr v3 store."""
    ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=False, compute=False, encoding=_encoding(ds))


@dataclass
class ScenarioData:
    """One scenario's fields to write: outputs per member (time, variable, lat, lon), maps, scalars."""

    outputs: Sequence[xr.DataArray | da.Array]
    maps: xr.DataArray | da.Array | np.ndarray
    scalars: np.ndarray


def store_writes(path: Path, scenarios: Sequence[ScenarioData]) -> list[Any]:
    """Delayed writes of every scenario (plan order), rechunked to the store's chunks: no two tasks share one.

    Members and scenarios are concatenated along `record` (and `step`) in plan order, then cut into the
    store's `chunk_records` blocks; a block's task computes only the members it overlaps.
    """
    group = zarr.open_group(path, mode="r")
    rec_chunk, step_chunk = group["outputs"].chunks[0], group["forcing_maps"].chunks[0]
    outputs = da.concatenate([da.asarray(_data(f)) for s in scenarios for f in s.outputs]).rechunk(
        {0: rec_chunk, 1: -1, 2: -1, 3: -1})
    maps = da.concatenate([da.asarray(_data(s.maps)) for s in scenarios]).rechunk({0: step_chunk, 1: -1, 2: -1, 3: -1})
    scalars = np.concatenate([np.asarray(s.scalars, np.float32) for s in scenarios])
    ds = xr.Dataset(
        {
            "outputs": (("record", "variable", "lat", "lon"), outputs),
            "forcing_maps": (("step", "forcer", "lat", "lon"), maps),
            "forcing_global": (("step", "scalar_forcer"), scalars),
        }
    )
    region = {"record": slice(0, outputs.shape[0]), "step": slice(0, maps.shape[0])}
    return [ds.to_zarr(path, region=region, zarr_format=3, consolidated=False, compute=False)]


def _data(x: xr.DataArray | da.Array | np.ndarray) -> da.Array | np.ndarray:
    data = x.data if isinstance(x, xr.DataArray) else x
    return data.astype(np.float32)


def write_statistics(path: Path, stats_scenarios: Sequence[str]) -> None:
    """Per-channel mean and std over the records/steps of `stats_scenarios`, appended to the store."""
    ds = open_blocks(path, READ_BLOCK)
    codes = [ds.attrs["scenarios"].index(s) for s in stats_scenarios]
    records = np.flatnonzero(np.isin(ds["record_scenario"].values, codes))
    steps = np.flatnonzero(np.isin(ds["step_scenario"].values, codes))
    picked = {
        "outputs": ds["outputs"].isel(record=records),
        "forcing_maps": ds["forcing_maps"].isel(step=steps),
        "forcing_global": ds["forcing_global"].isel(step=steps),
    }
    stats = {}
    for name, channel in STATS_FIELDS.items():
        arr = picked[name].astype(np.float64)
        dims = [d for d in arr.dims if d != channel]
        stats[f"{name}_mean"] = arr.mean(dims)
        stats[f"{name}_std"] = arr.std(dims)
    (mean_std,) = dask.compute(stats)
    out = xr.Dataset({k: v.astype(np.float32).variable for k, v in mean_std.items()})
    out.attrs = dict(ds.attrs) | {"stats_scenarios": list(stats_scenarios)}
    out.to_zarr(path, mode="a", zarr_format=3, consolidated=False)


@contextmanager
def staged_store(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to `dest`, on failure remove it."""
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists; the climate store is never overwritten in place")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def open_blocks(path: Path | str, block: int, storage_options: dict[str, Any] | None = None) -> xr.Dataset:
    """Open a store lazily with `block` records/steps per Dask task (one zarr call reads a block's chunks)."""
    ds = xr.open_zarr(path, consolidated=False, chunks=None, storage_options=storage_options)
    return ds.chunk({d: block for d in ("record", "step") if d in ds.dims})


def open_climate_store(
    path: Path | str, block: int | None = None, storage_options: dict[str, Any] | None = None
) -> xr.Dataset:
    """Open a climate store (a path or any fsspec URI) lazily, with channel names attached as coordinates.

    Dask chunks follow the stored chunks unless `block` records per task is given.
    """
    ds = (
        xr.open_zarr(path, consolidated=False, storage_options=storage_options)
        if block is None
        else open_blocks(path, block, storage_options)
    )
    if ds.attrs.get("layout") != LAYOUT_VERSION:
        raise DataError(
            str(path), "not a climate store", expected=LAYOUT_VERSION, found=str(ds.attrs.get("layout"))
        )
    return ds.assign_coords(
        variable=list(OUTPUT_VARIABLES), forcer=list(MAP_FORCERS), scalar_forcer=list(GLOBAL_FORCERS)
    )


def cf_attributes(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """CF attributes of each original variable, as kept in the store."""
    return json.loads(ds.attrs.get("cf_attributes", "{}"))


def scenario_code(ds: xr.Dataset, scenario: str) -> int:
    """Integer code of a scenario in the store (DataError if the store lacks it)."""
    if scenario not in ds.attrs["scenarios"]:
        raise DataError(
            f"climate store scenario '{scenario}'",
            "unknown scenario",
            expected=", ".join(ds.attrs["scenarios"]),
            found=scenario,
        )
    return ds.attrs["scenarios"].index(scenario)


def months_per_year(ds: xr.Dataset) -> int:
    """Records per year and member of a store: 1 (yearly) or 12 (monthly)."""
    return int(ds.attrs.get("months_per_year", 1))


def scenario_records(ds: xr.Dataset, scenario: str) -> tuple[int, int, int, int]:
    """(first record, members, first step, years) of a scenario in the store."""
    code = scenario_code(ds, scenario)
    rec = np.flatnonzero(ds["record_scenario"].values == code)
    steps = np.flatnonzero(ds["step_scenario"].values == code)
    members = int(ds["record_member"].values[rec].max()) + 1
    return int(rec[0]), members, int(steps[0]), len(steps)


def scenario_view(ds: xr.Dataset, scenario: str) -> xr.Dataset:
    """One scenario in ClimateBench layout, lazily: CO2, CH4 (time); SO2, BC (time, lat, lon);
    tas, diurnal_temperature_range, pr, pr90 (member, time, lat, lon), or (member, time, month, lat, lon) in a
    monthly store (time is always the year); CF attributes restored."""
    rec0, members, step0, years = scenario_records(ds, scenario)
    months = months_per_year(ds)
    out = ds["outputs"].isel(record=slice(rec0, rec0 + members * years * months)).data
    out = out.reshape(members, years, *([months] if months > 1 else []), *out.shape[1:])
    time = ds["step_year"].values[step0 : step0 + years]
    maps = ds["forcing_maps"].isel(step=slice(step0, step0 + years)).data
    scalars = ds["forcing_global"].isel(step=slice(step0, step0 + years)).data
    grid = {"lat": ds["lat"], "lon": ds["lon"]}
    dims = ("member", "time", *(["month"] if months > 1 else []), "lat", "lon")
    data = {name: (dims, out[..., i, :, :]) for i, name in enumerate(OUTPUT_VARIABLES)}
    data |= {name: (("time", "lat", "lon"), maps[:, i]) for i, name in enumerate(MAP_FORCERS)}
    data |= {name: (("time",), scalars[:, i]) for i, name in enumerate(GLOBAL_FORCERS)}
    view = xr.Dataset(data, coords={"time": time, "member": np.arange(members)} | grid)
    if months > 1:
        view = view.assign_coords(month=np.arange(1, 13))
    for name, attrs in cf_attributes(ds).items():
        if name in view.variables:
            view[name].attrs = attrs
    view.attrs = json.loads(ds.attrs.get("source_attributes", "{}")).get(scenario, {})
    return view


def yearly_view(ds: xr.Dataset, scenario: str) -> xr.Dataset:
    """`scenario_view` with yearly outputs: a monthly store's months averaged (CF attributes kept)."""
    view = scenario_view(ds, scenario)
    return view.mean("month", keep_attrs=True) if "month" in view.dims else view

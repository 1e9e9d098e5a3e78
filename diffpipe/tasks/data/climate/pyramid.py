"""Spatiotemporal Pyramid Flow (SPF) on the climate store: level targets, training batches, parallel sampling.

A pyramid of levels runs from coarse to fine (`model.levels`): level k holds fields averaged over
calendar blocks of its period (10 years: decades 1850-1859, ...; 1 month in a monthly store) on the grid
coarsened `space_factor`x by average pooling; the finest level is the store's records (years, or months).
One UNet serves every level. Its input is the noisy level-k field and, as channels, the coarser level's
field of the block containing this one (upsampled; zeros at level 0), the SO2/BC maps and CO2/CH4
averaged over the block (pooled), the season of the block (mean cos and sin of its months' phase in the
year: zeros for whole years), the static geography (pooled) and a one-hot of the level; the block's mean
time in years (a month m of year y is y + (m - 6.5) / 12, so a year's months average to y) enters
through the year embedding.

Training takes the levels in turn (level k mod L at step k) and a batch of that level's blocks; the
condition holds the true coarser field (teacher forcing), so any objective trains it as it trains the
single-level emulator. The coarse levels' block means are accumulated in one pass of reads and held in
memory (a decadal level on a 4x coarser grid is 1/160 of the yearly data); the finest level's records
come from the single-level emulator's loader, the in-memory cache or, for a split larger than the memory
budget, the zarr stream. Sampling goes level by level, and within a level every block and
every ensemble member of the held-out scenario is one batched solve conditioned on the coarser level's
samples, so decadal and yearly fields come out directly, all periods at once, with no autoregression
in time. This is a cascade of per-level flows sharing one network, not Pyramid Flow's single piecewise
trajectory with re-noising between stages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from diffpipe.schemas.climate import PyramidLevel

from .batches import STATIC_CHANNELS, YEAR_ORIGIN, RecordBatch
from .layout import GLOBAL_FORCERS, MAP_FORCERS, OUTPUT_VARIABLES
from .loader import ClimateSamples


def pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling of the last two (lat, lon) axes by `factor`."""
    if factor == 1:
        return x
    lead = x.shape[:-2]
    return F.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), factor).reshape(*lead, *(s // factor for s in x.shape[-2:]))


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest upsampling of the last two axes by `factor` (each coarse cell repeated)."""
    return x.repeat_interleave(factor, -2).repeat_interleave(factor, -1) if factor > 1 else x


SEASON_CHANNELS = 2
"""cos and sin of the phase of a block's months in the year (zeros for blocks of whole years)."""


def condition_channels(levels: int) -> int:
    """Condition channels of the pyramid UNet: coarser field, maps, scalars, season, static geography, level
    one-hot."""
    return len(OUTPUT_VARIABLES) + len(MAP_FORCERS) + len(GLOBAL_FORCERS) + SEASON_CHANNELS + STATIC_CHANNELS + levels


def record_time(year: np.ndarray | torch.Tensor, month: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(n,) float64 time in years of records: the year, or y + (m - 6.5) / 12 for month m (1..12) of year y."""
    year, month = torch.as_tensor(year).double(), torch.as_tensor(month)
    return torch.where(month > 0, year + (month.double() - 6.5) / 12, year)


def season(month: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(n, 2) cos and sin of month m's phase 2 pi (m - 1) / 12; zeros for yearly records (month 0)."""
    month = torch.as_tensor(month)
    phase = 2 * torch.pi * (month.double() - 1) / 12
    return torch.stack([phase.cos(), phase.sin()], dim=1) * (month > 0).double()[:, None]


def month_index(year: np.ndarray, month: np.ndarray) -> np.ndarray:
    """Months since year 0 of each record (a yearly record counts as its January)."""
    return np.asarray(year, np.int64) * 12 + np.maximum(np.asarray(month, np.int64) - 1, 0)


@dataclass
class PyramidForcing:
    """The condition of a pyramid batch (the interface of `Forcing`: channels, year_label, rows, device)."""

    level: int
    levels: int
    coarse: torch.Tensor
    """(batch, 4, h, w) the coarser level's normalised field, upsampled to this level (zeros at level 0)."""
    maps: torch.Tensor
    """(batch, 2, h, w) normalised SO2 and BC maps averaged over the block, pooled to this level."""
    scalars: torch.Tensor
    """(batch, 2) normalised CO2 and CH4 averaged over the block."""
    year: torch.Tensor
    """(batch,) mean time of the block in years (`record_time`)."""
    static: torch.Tensor
    """(3, h, w) static geography pooled to this level."""
    season: torch.Tensor
    """(batch, 2) mean cos and sin of the block's months' phase (`season`; zeros for whole years)."""

    def channels(self) -> torch.Tensor:
        """Every condition as (batch, channels, h, w)."""
        n, _, h, w = self.maps.shape
        scalars = self.scalars[:, :, None, None].expand(-1, -1, h, w)
        seasons = self.season.to(self.maps.dtype)[:, :, None, None].expand(-1, -1, h, w)
        onehot = torch.zeros(n, self.levels, h, w, dtype=self.maps.dtype, device=self.maps.device)
        onehot[:, self.level] = 1.0
        return torch.cat([self.coarse, self.maps, scalars, seasons, self.static.expand(n, -1, -1, -1), onehot],
                         dim=1)

    def year_label(self) -> torch.Tensor:
        """The block's mean year as a continuous 'timestep' for the UNet's class embedding."""
        return (self.year - YEAR_ORIGIN).float()

    def __len__(self) -> int:
        """Batch size."""
        return len(self.year)

    def __getitem__(self, index: torch.Tensor | slice) -> PyramidForcing:
        """The rows in `index`."""
        return PyramidForcing(self.level, self.levels, self.coarse[index], self.maps[index], self.scalars[index],
                              self.year[index], self.static, self.season[index])

    def to(self, device: torch.device) -> PyramidForcing:
        """The same condition on `device`."""
        return PyramidForcing(self.level, self.levels, self.coarse.to(device), self.maps.to(device),
                              self.scalars.to(device), self.year.to(device), self.static.to(device),
                              self.season.to(device))


@dataclass
class LevelBlocks:
    """The blocks of one level: block means of targets and forcing, and each record's block."""

    factor: int
    target: torch.Tensor
    """(blocks, 4, h, w) mean normalised target of each block (pooled)."""
    maps: torch.Tensor
    scalars: torch.Tensor
    year: torch.Tensor
    static: torch.Tensor
    block_of_record: np.ndarray
    """Index of each record's block at this level."""
    season: torch.Tensor
    """(blocks, 2) mean season of each block."""

    @property
    def nbytes(self) -> int:
        """Bytes of the block means held in memory."""
        tensors = (self.target, self.maps, self.scalars, self.year, self.season)
        return sum(t.numel() * t.element_size() for t in tensors)


def block_index(level: PyramidLevel, keys: dict[str, np.ndarray]) -> np.ndarray:
    """Each record's block at `level` from its `scenario`, `member`, `year` and `month` (blocks never mix
    scenarios or members; blocks are in scenario, member, time order)."""
    periods = month_index(keys["year"], keys["month"]) // level.months
    stacked = np.stack([keys["scenario"], keys["member"], periods], axis=1)
    return np.unique(stacked, axis=0, return_inverse=True)[1].reshape(-1)


class BlockSums:
    """Running float64 sums and counts of record fields per block."""

    def __init__(self, blocks: int):
        self.blocks = blocks
        self.sums: dict[str, torch.Tensor] = {}
        self.count = torch.zeros(blocks, dtype=torch.float64)

    def add(self, rows: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Add each row of `values` to the sums of its block (`rows`)."""
        for name, v in values.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros((self.blocks, *v.shape[1:]), dtype=torch.float64)
            self.sums[name].index_add_(0, rows, v.double())
        self.count.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))

    def mean(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Block means of `name` (float32 unless `dtype`)."""
        s = self.sums[name]
        return (s / self.count.reshape(-1, *([1] * (s.dim() - 1)))).to(dtype)


def level_blocks(levels: tuple[PyramidLevel, ...], parts: Iterable[dict[str, torch.Tensor]],
                 keys: dict[str, np.ndarray], static: torch.Tensor) -> list[LevelBlocks]:
    """Blocks of every level, accumulated over consecutive parts of a split (target, this year's maps and
    scalars, year) whose records have the `scenario`, `member` and `year` of `keys`: only the pooled block
    sums are held, so a split larger than memory is one pass of reads."""
    if not levels:
        return []
    index = [block_index(level, keys) for level in levels]
    sums = [BlockSums(int(i.max()) + 1) for i in index]
    start = 0
    for part in parts:
        n = len(part["year"])
        for level, rows, acc in zip(levels, index, sums, strict=True):
            f = level.space_factor
            acc.add(torch.from_numpy(rows[start:start + n]), {
                "target": pool(part["target"], f), "maps": pool(part["maps"], f), "scalars": part["scalars"],
                "year": record_time(part["year"], part["month"]), "season": season(part["month"])})
        start += n
    return [LevelBlocks(level.space_factor, acc.mean("target"), acc.mean("maps"), acc.mean("scalars"),
                        acc.mean("year", torch.float64), pool(static, level.space_factor), rows, acc.mean("season"))
            for level, rows, acc in zip(levels, index, sums, strict=True)]


def split_keys(split: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The scenario, member, year and month of each record of an in-memory split."""
    return {k: split[k].numpy() for k in ("scenario", "member", "year", "month")}


def samples_keys(samples: ClimateSamples) -> dict[str, np.ndarray]:
    """The scenario, member, year and month of each record of `samples`, from the store's index (no field read)."""
    r = samples.records
    return {"scenario": samples.record_scenario[r], "member": samples.record_member[r], "year": samples.record_year[r],
            "month": samples.record_month[r]}


def samples_parts(samples: ClimateSamples, records: int) -> Iterator[dict[str, torch.Tensor]]:
    """`samples` in consecutive parts of `records` records, with this year's forcing only."""
    for start in range(0, len(samples), records):
        yield current_year(samples[list(range(start, min(start + records, len(samples))))])


def parents(blocks: list[LevelBlocks]) -> list[np.ndarray | None]:
    """For each level, the coarser level's block of each of its blocks (None at level 0)."""
    out: list[np.ndarray | None] = [None]
    for coarse, fine in zip(blocks[:-1], blocks[1:], strict=True):
        parent = np.empty(fine.target.shape[0], np.int64)
        parent[fine.block_of_record] = coarse.block_of_record
        out.append(parent)
    return out


def current_year(split: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The split with only this year's maps and scalars (the last of the history channels)."""
    return split | {"maps": split["maps"][:, -len(MAP_FORCERS):], "scalars": split["scalars"][:, -len(GLOBAL_FORCERS):]}


class Pyramid:
    """The blocks of the first levels of a pyramid of `levels` (all of them, or all but the finest), with each
    block's parent in the coarser level."""

    def __init__(self, blocks: list[LevelBlocks], levels: int):
        self.blocks, self.levels = blocks, levels
        self.parents = parents(blocks)

    def condition(self, level: int, index: torch.Tensor, coarse: torch.Tensor | None) -> PyramidForcing:
        """The condition of blocks `index` of `level` given the coarser field of each (None: zeros)."""
        b = self.blocks[level]
        if coarse is None:
            coarse = torch.zeros((len(index), *b.target.shape[1:]))
        return PyramidForcing(level, self.levels, coarse, b.maps[index], b.scalars[index], b.year[index], b.static,
                              b.season[index])

    def coarser_field(self, level: int, parent: torch.Tensor | np.ndarray, factor: int) -> torch.Tensor:
        """The true field of blocks `parent` of the level above `level`, upsampled to a level of space `factor`."""
        above = self.blocks[level - 1]
        return upsample(above.target[torch.as_tensor(parent)], above.factor // factor)


class RecordSource(Protocol):
    """The finest level's training records: the in-memory cache or the zarr stream."""

    def take(self, gen: torch.Generator, n: int) -> RecordBatch:
        """`n` records with their store ids."""
        ...


class PyramidBatches:
    """Training batches of a pyramid: level k mod L at step k (round robin, so a resumed run continues the
    schedule); a coarse level's blocks are drawn from memory (`gen`), the finest level's records from `finest`,
    each with the true coarser field of its block (teacher forcing). `record_month` is the month of every
    store record (zeros in a yearly store), `records` the store ids of the finest level's records."""

    def __init__(self, coarse: Pyramid, finest: RecordSource, records: np.ndarray, static: torch.Tensor,
                 device: torch.device, start_step: int = 0, record_month: np.ndarray | None = None):
        self.coarse, self.finest, self.records, self.static = coarse, finest, records, static
        self.device, self.step, self.record_month = device, start_step, record_month

    def next(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, PyramidForcing]:
        """The batch of this step's level."""
        level = self.step % self.coarse.levels
        self.step += 1
        if level == self.coarse.levels - 1:
            return self.finest_batch(gen, n)
        b = self.coarse.blocks[level]
        index = torch.randint(0, b.target.shape[0], (n,), generator=gen)
        coarse = None if level == 0 else self.coarse.coarser_field(level, self.coarse.parents[level][index.numpy()],
                                                                   b.factor)
        return b.target[index].to(self.device), self.coarse.condition(level, index, coarse).to(self.device)

    def finest_batch(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, PyramidForcing]:
        """`n` records of the finest level (the store's years or months on its grid), each with its coarser
        block's true field."""
        batch = self.finest.take(gen, n)
        level = self.coarse.levels - 1
        if level == 0:
            coarse = torch.zeros_like(batch.target, device="cpu")
        else:
            block = self.coarse.blocks[-1].block_of_record[np.searchsorted(self.records, batch.ids)]
            coarse = self.coarse.coarser_field(level, block, 1)
        f = batch.forcing
        month = np.zeros(len(batch.ids), np.int64) if self.record_month is None else self.record_month[batch.ids]
        cond = PyramidForcing(level, self.coarse.levels, coarse, f.maps[:, -len(MAP_FORCERS):].cpu(),
                              f.scalars[:, -len(GLOBAL_FORCERS):].cpu(), record_time(f.year.cpu(), month),
                              self.static, season(month).float())
        return batch.target.to(self.device), cond.to(self.device)


Draw = Callable[[tuple[int, ...], PyramidForcing], torch.Tensor]
"""Samples of a given shape for a batch of conditions (the stage's sampler around the network)."""


def sample_levels(draw: Draw, blocks: Pyramid, members: int, batch_size: int) -> list[torch.Tensor]:
    """Samples of every level, coarse to fine: (blocks, members, 4, h, w) normalised fields per level.

    Within a level, every (block, member) row is one batched solve conditioned on that member's sample
    of the coarser block containing it.
    """
    out: list[torch.Tensor] = []
    for level, b in enumerate(blocks.blocks):
        count = b.target.shape[0]
        index = torch.arange(count).repeat_interleave(members)
        member = torch.arange(members).repeat(count)
        coarse = None
        if level > 0:
            parent = torch.from_numpy(blocks.parents[level])[index]
            coarse = upsample(out[-1][parent, member], blocks.blocks[level - 1].factor // b.factor)
        fields = []
        for start in range(0, len(index), batch_size):
            rows = index[start:start + batch_size]
            cond = blocks.condition(level, rows, None if coarse is None else coarse[start:start + batch_size])
            fields.append(draw((len(rows), len(OUTPUT_VARIABLES), *b.target.shape[-2:]), cond))
        out.append(torch.cat(fields).reshape(count, members, *fields[0].shape[1:]))
    return out


def write_level(path: Path, fields: np.ndarray, years: np.ndarray, store: xr.Dataset, level: PyramidLevel,
                cf: dict[str, dict]) -> None:
    """One coarser level's samples as zarr: (period, member, lat, lon) per variable in physical units, the
    period's mean year as `period`, and lat/lon of the pooled grid (means of the pooled cells)."""
    f = level.space_factor
    lat = store["lat"].values.reshape(-1, f).mean(1)
    lon = store["lon"].values.reshape(-1, f).mean(1)
    dims = ("period", "member", "lat", "lon")
    ds = xr.Dataset(
        {v: (dims, fields[:, :, i], cf.get(v, {})) for i, v in enumerate(OUTPUT_VARIABLES)},
        coords={"period": ("period", years, {"long_name": f"mean year of a {level.period_years}-year block"}),
                "member": np.arange(fields.shape[1]), "lat": lat, "lon": lon},
        attrs={"space_factor": f, "period_years": level.period_years},
    )
    ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=False)


def write_months(path: Path, fields: np.ndarray, years: np.ndarray, store: xr.Dataset, cf: dict[str, dict]) -> None:
    """A monthly finest level's samples as zarr: (time, month, member, lat, lon) per variable in physical units
    from (year, month, member, variable, lat, lon) `fields`."""
    dims = ("time", "month", "member", "lat", "lon")
    ds = xr.Dataset(
        {v: (dims, fields[:, :, :, i], cf.get(v, {})) for i, v in enumerate(OUTPUT_VARIABLES)},
        coords={"time": ("time", years.astype(np.int64), cf.get("time", {})), "month": np.arange(1, 13),
                "member": np.arange(fields.shape[2]), "lat": store["lat"], "lon": store["lon"]},
    )
    ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=False)

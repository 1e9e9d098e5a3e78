"""Spatiotemporal Pyramid Flow (SPF) on the climate store: level targets, training batches, parallel sampling.

A pyramid of levels runs from coarse to fine (`model.levels`): level k holds fields averaged over
calendar blocks of `period_years` (10: decades 1850-1859, ...) on the grid coarsened `space_factor`x by
average pooling. One UNet serves every level. Its input is the noisy level-k field and, as channels, the
coarser level's field of the block containing this one (upsampled; zeros at level 0), the SO2/BC maps
and CO2/CH4 averaged over the block (pooled), the static geography (pooled) and a one-hot of the level;
the block's mean calendar year enters through the year embedding.

Training draws a level per step (uniformly, from the step's generator) and a batch of that level's
blocks; the condition holds the true coarser field (teacher forcing), so any objective trains it as it
trains the single-level emulator. Sampling goes level by level, and within a level every block and
every ensemble member of the held-out scenario is one batched solve conditioned on the coarser level's
samples, so decadal and yearly fields come out directly, all periods at once, with no autoregression
in time. This is a cascade of per-level flows sharing one network, not Pyramid Flow's single piecewise
trajectory with re-noising between stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from diffpipe.schemas.climate import PyramidLevel

from .batches import STATIC_CHANNELS, YEAR_ORIGIN
from .layout import GLOBAL_FORCERS, MAP_FORCERS, OUTPUT_VARIABLES


def pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling of the last two (lat, lon) axes by `factor`."""
    if factor == 1:
        return x
    lead = x.shape[:-2]
    return F.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), factor).reshape(*lead, *(s // factor for s in x.shape[-2:]))


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest upsampling of the last two axes by `factor` (each coarse cell repeated)."""
    return x.repeat_interleave(factor, -2).repeat_interleave(factor, -1) if factor > 1 else x


def condition_channels(levels: int) -> int:
    """Condition channels of the pyramid UNet: coarser field, maps, scalars, static geography, level one-hot."""
    return len(OUTPUT_VARIABLES) + len(MAP_FORCERS) + len(GLOBAL_FORCERS) + STATIC_CHANNELS + levels


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
    """(batch,) mean calendar year of the block."""
    static: torch.Tensor
    """(3, h, w) static geography pooled to this level."""

    def channels(self) -> torch.Tensor:
        """Every condition as (batch, channels, h, w)."""
        n, _, h, w = self.maps.shape
        scalars = self.scalars[:, :, None, None].expand(-1, -1, h, w)
        onehot = torch.zeros(n, self.levels, h, w, dtype=self.maps.dtype, device=self.maps.device)
        onehot[:, self.level] = 1.0
        return torch.cat([self.coarse, self.maps, scalars, self.static.expand(n, -1, -1, -1), onehot], dim=1)

    def year_label(self) -> torch.Tensor:
        """The block's mean year as a continuous 'timestep' for the UNet's class embedding."""
        return (self.year - YEAR_ORIGIN).float()

    def __len__(self) -> int:
        """Batch size."""
        return len(self.year)

    def __getitem__(self, index: torch.Tensor | slice) -> PyramidForcing:
        """The rows in `index`."""
        return PyramidForcing(self.level, self.levels, self.coarse[index], self.maps[index], self.scalars[index],
                              self.year[index], self.static)

    def to(self, device: torch.device) -> PyramidForcing:
        """The same condition on `device`."""
        return PyramidForcing(self.level, self.levels, self.coarse.to(device), self.maps.to(device),
                              self.scalars.to(device), self.year.to(device), self.static.to(device))


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


def block_means(values: torch.Tensor, inverse: np.ndarray, blocks: int) -> torch.Tensor:
    """Mean of `values` rows per block (`inverse`: each row's block)."""
    index = torch.from_numpy(inverse)
    sums = torch.zeros((blocks, *values.shape[1:]), dtype=torch.float64).index_add_(0, index, values.double())
    counts = torch.bincount(index, minlength=blocks).double().reshape(-1, *([1] * (values.dim() - 1)))
    return (sums / counts).float()


def level_blocks(levels: tuple[PyramidLevel, ...], split: dict[str, torch.Tensor],
                 static: torch.Tensor) -> list[LevelBlocks]:
    """Blocks of every level from a split's records (target, current-year maps and scalars, year, member,
    scenario); blocks never mix scenarios or members."""
    out = []
    years = split["year"].numpy()
    for level in levels:
        keys = np.stack([split["scenario"].numpy(), split["member"].numpy(), years // level.period_years], axis=1)
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        count = int(inverse.max()) + 1
        f = level.space_factor
        out.append(LevelBlocks(
            f, pool(block_means(split["target"], inverse, count), f),
            pool(block_means(split["maps"], inverse, count), f), block_means(split["scalars"], inverse, count),
            block_means(split["year"].double()[:, None], inverse, count)[:, 0], pool(static, f), inverse))
    return out


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


class PyramidBatches:
    """Training batches of a pyramid: a level per step, then that level's blocks with their true coarser field."""

    def __init__(self, levels: tuple[PyramidLevel, ...], split: dict[str, torch.Tensor], static: torch.Tensor,
                 device: torch.device):
        self.blocks = level_blocks(levels, current_year(split), static)
        self.parents = parents(self.blocks)
        self.device = device

    def condition(self, level: int, index: torch.Tensor, coarse: torch.Tensor | None) -> PyramidForcing:
        """The condition of blocks `index` of `level` given the coarser field of each (None: zeros)."""
        b = self.blocks[level]
        if coarse is None:
            coarse = torch.zeros((len(index), *b.target.shape[1:]))
        return PyramidForcing(level, len(self.blocks), coarse, b.maps[index], b.scalars[index], b.year[index],
                              b.static)

    def next(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, PyramidForcing]:
        """A random level, then `n` of its blocks drawn with replacement (all randomness from `gen`)."""
        level = int(torch.randint(0, len(self.blocks), (1,), generator=gen))
        b = self.blocks[level]
        index = torch.randint(0, b.target.shape[0], (n,), generator=gen)
        coarse = None
        if level > 0:
            parent = torch.from_numpy(self.parents[level][index.numpy()])
            above = self.blocks[level - 1]
            coarse = upsample(above.target[parent], above.factor // b.factor)
        return b.target[index].to(self.device), self.condition(level, index, coarse).to(self.device)


Draw = Callable[[tuple[int, ...], PyramidForcing], torch.Tensor]
"""Samples of a given shape for a batch of conditions (the stage's sampler around the network)."""


def sample_levels(draw: Draw, blocks: PyramidBatches, members: int, batch_size: int) -> list[torch.Tensor]:
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

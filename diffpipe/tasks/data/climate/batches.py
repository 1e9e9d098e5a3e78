"""Training batches for the climate emulator: forcing as network channels, and the in-memory cache.

A batch is (normalised target fields, `Forcing`). `CachedBatches` reads the training split once into
(device) memory when it fits the memory budget; larger splits stream from zarr (`stream.ChunkStream`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .layout import MAP_FORCERS, OUTPUT_VARIABLES
from .loader import ClimateSamples

YEAR_ORIGIN = 1850
"""The year embedding sees `year - YEAR_ORIGIN` (0..250 for ClimateBench's years)."""
STATIC_CHANNELS = 3
"""sin(latitude), sin(longitude), cos(longitude): tell the convolutions where on the globe they are."""
READ_BLOCK = 256


@dataclass
class Forcing:
    """The condition of a batch: forcing maps, global scalars (history stacked), year, static geography."""

    maps: torch.Tensor
    """(batch, history * 2, lat, lon) normalised SO2 and BC maps."""
    scalars: torch.Tensor
    """(batch, history * 2) normalised cumulative CO2 and CH4."""
    year: torch.Tensor
    """(batch,) calendar year."""
    static: torch.Tensor
    """(3, lat, lon) static geography channels."""

    def channels(self) -> torch.Tensor:
        """Every condition as (batch, channels, lat, lon): maps, broadcast scalars, static geography."""
        n, _, h, w = self.maps.shape
        scalars = self.scalars[:, :, None, None].expand(-1, -1, h, w)
        return torch.cat([self.maps, scalars, self.static.expand(n, -1, -1, -1)], dim=1)

    def year_label(self) -> torch.Tensor:
        """The year as a continuous 'timestep' for the UNet's class embedding."""
        return (self.year - YEAR_ORIGIN).float()

    def __len__(self) -> int:
        """Batch size."""
        return len(self.year)

    def __getitem__(self, index: torch.Tensor | slice) -> Forcing:
        """The rows in `index`."""
        return Forcing(self.maps[index], self.scalars[index], self.year[index], self.static)

    def to(self, device: torch.device) -> Forcing:
        """The same condition on `device`."""
        return Forcing(self.maps.to(device), self.scalars.to(device), self.year.to(device), self.static.to(device))


@dataclass
class RecordBatch:
    """A batch of records: normalised targets, their forcing and the store's record id of each row."""

    target: torch.Tensor
    forcing: Forcing
    ids: np.ndarray


def condition_channels(history: int) -> int:
    """Number of condition channels the network receives for `history` years of forcing."""
    return history * (len(MAP_FORCERS) + 2) + STATIC_CHANNELS


def static_channels(lat: np.ndarray, lon: np.ndarray) -> torch.Tensor:
    """(3, lat, lon): sin(lat), sin(lon), cos(lon)."""
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    return torch.from_numpy(np.stack([np.sin(la), np.sin(lo), np.cos(lo)]).astype(np.float32))


def to_batch(item: dict[str, torch.Tensor], static: torch.Tensor) -> tuple[torch.Tensor, Forcing]:
    """(target, Forcing) of a batched `ClimateSamples` item."""
    return item["target"], Forcing(item["maps"], item["scalars"], item["year"], static)


def training_megabytes(samples: ClimateSamples, grid_cells: int) -> float:
    """Size of the training split held in memory (targets and forcing maps per record, float32) in MB."""
    channels = len(OUTPUT_VARIABLES) + samples.history * len(MAP_FORCERS)
    return len(samples) * channels * grid_cells * 4 / 1e6


def read_split(samples: ClimateSamples, positions: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Every sample (or those at `positions`) of `samples` in memory, read `READ_BLOCK` records per zarr call."""
    positions = list(range(len(samples))) if positions is None else positions
    parts = [samples[positions[i:i + READ_BLOCK]] for i in range(0, len(positions), READ_BLOCK)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class CachedBatches:
    """The whole training split in (device) memory; batches drawn with replacement from `gen`."""

    def __init__(self, samples: ClimateSamples, static: torch.Tensor, device: torch.device):
        whole = {k: v.to(device) for k, v in read_split(samples).items() if k in ("target", "maps", "scalars", "year")}
        self.target, self.forcing = to_batch(whole, static.to(device))
        self.ids = samples.records

    def take(self, gen: torch.Generator, n: int) -> RecordBatch:
        """A random batch with its record ids (indices drawn on the CPU generator)."""
        idx = torch.randint(0, self.target.shape[0], (n,), generator=gen)
        ids = self.ids[idx.numpy()]
        if self.target.device.type != "cpu":
            idx = idx.to(self.target.device)
        return RecordBatch(self.target[idx], self.forcing[idx], ids)

    def next(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, Forcing]:
        """A random batch."""
        batch = self.take(gen, n)
        return batch.target, batch.forcing

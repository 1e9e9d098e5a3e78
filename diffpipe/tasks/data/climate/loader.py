"""Training samples from a climate store (a local path or any fsspec URI, such as `s3://`).

Index with a list of record positions to read a whole batch in one zarr call (chunks fetched
concurrently); `batch_loader` wires that into a torch DataLoader with a BatchSampler. The streaming
reader (`stream.ChunkStream`) reads whole chunks of the same arrays (`arrays`) instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .layout import open_climate_store, scenario_code


class ClimateSamples(Dataset):
    """Normalised (target, forcing maps, global forcings) samples of chosen scenarios from a climate store.

    A record is a member-year, or a member-month of a monthly store (its `month`, 1..12; 0 when yearly), whose
    forcing is its year's.

    `history` years of forcing (this year and the ones before, clamped at the scenario's first year)
    are stacked as channels: maps (history * 2, lat, lon), scalars (history * 2,).
    """

    def __init__(self, path: Path | str, scenarios: Sequence[str] | None = None, history: int = 1,
                 storage_options: dict[str, Any] | None = None):
        ds = open_climate_store(path, storage_options=storage_options)
        self.path, self.history, self.storage_options = str(path), history, storage_options or {}
        self.scenarios = list(scenarios or ds.attrs["scenarios"])
        codes = [scenario_code(ds, s) for s in self.scenarios]
        self.records = np.flatnonzero(np.isin(ds["record_scenario"].values, codes))
        self.record_step = ds["record_step"].values.astype(np.int64)
        self.record_year = ds["record_year"].values.astype(np.int64)
        self.record_member = ds["record_member"].values.astype(np.int64)
        self.record_scenario = ds["record_scenario"].values.astype(np.int64)
        self.record_month = (ds["record_month"].values.astype(np.int64) if "record_month" in ds
                             else np.zeros(ds.sizes["record"], np.int64))
        """Month (1..12) of each record of a monthly store; 0 in a yearly store."""
        step_scenario = ds["step_scenario"].values
        uniq, first = np.unique(step_scenario, return_index=True)
        first_of_code = np.zeros(int(uniq.max()) + 1, np.int64)
        first_of_code[uniq] = first
        self.first_step = first_of_code[step_scenario]
        stats = {k: ds[k].values.astype(np.float32) for k in ds.data_vars if k.endswith(("_mean", "_std"))}
        self.out_mean, self.out_std = stats["outputs_mean"], stats["outputs_std"]
        self.map_mean, self.map_std = stats["forcing_maps_mean"], stats["forcing_maps_std"]
        scalars = ds["forcing_global"].values
        self.scalars = (scalars - stats["forcing_global_mean"]) / stats["forcing_global_std"]
        self._arrays: tuple[zarr.Array, zarr.Array] | None = None
        self._pid = -1

    def arrays(self) -> tuple[zarr.Array, zarr.Array]:
        """The store's `outputs` and `forcing_maps` zarr arrays (opened once per process)."""
        if self._arrays is None or self._pid != os.getpid():  # reopen after fork (zarr's I/O thread)
            group = zarr.open_group(self.path, mode="r", storage_options=self.storage_options or None)
            self._arrays, self._pid = (group["outputs"], group["forcing_maps"]), os.getpid()
        return self._arrays

    def __len__(self) -> int:
        return int(self.records.size)

    def history_steps(self, steps: np.ndarray) -> np.ndarray:
        """(n, history) forcing steps of each step: this year and the ones before, clamped at its scenario's start."""
        back = steps[:, None] - np.arange(self.history - 1, -1, -1)[None, :]
        return np.maximum(back, self.first_step[steps][:, None])

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, torch.Tensor]:
        """One sample (int) or a batch (list of positions) as a dict of tensors."""
        single = np.isscalar(index)
        rec = self.records[np.atleast_1d(np.asarray(index))]
        outputs, maps = self.arrays()
        order = np.argsort(rec)
        target = np.empty((rec.size, *outputs.shape[1:]), np.float32)
        target[order] = outputs.get_orthogonal_selection((rec[order],))
        steps = self.history_steps(self.record_step[rec])
        uniq, inverse = np.unique(steps, return_inverse=True)
        fields = maps.get_orthogonal_selection((uniq,))[inverse.reshape(steps.shape)]
        fields = (fields - self.map_mean[:, None, None]) / self.map_std[:, None, None]
        batch = {
            "target": torch.from_numpy((target - self.out_mean[:, None, None]) / self.out_std[:, None, None]),
            "maps": torch.from_numpy(fields.reshape(rec.size, -1, *fields.shape[-2:]).astype(np.float32)),
            "scalars": torch.from_numpy(self.scalars[steps].reshape(rec.size, -1).astype(np.float32)),
            "year": torch.from_numpy(self.record_year[rec]),
            "member": torch.from_numpy(self.record_member[rec]),
            "scenario": torch.from_numpy(self.record_scenario[rec]),
            "month": torch.from_numpy(self.record_month[rec]),
        }
        return {k: v[0] for k, v in batch.items()} if single else batch

    def denormalise(self, target: torch.Tensor) -> torch.Tensor:
        """Physical units of a normalised (..., variable, lat, lon) target."""
        mean = torch.as_tensor(self.out_mean, dtype=target.dtype, device=target.device)[:, None, None]
        std = torch.as_tensor(self.out_std, dtype=target.dtype, device=target.device)[:, None, None]
        return target * std + mean


def batch_loader(
    samples: ClimateSamples,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader yielding batched dicts, each batch read from zarr in one call per array."""
    order = (
        RandomSampler(samples, generator=torch.Generator().manual_seed(seed))
        if shuffle
        else SequentialSampler(samples)
    )
    return DataLoader(
        samples,
        sampler=BatchSampler(order, batch_size, drop_last),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )

"""Training batches streamed from a climate store larger than memory: whole chunks, a shuffle buffer, prefetch.

The pattern of the large scientific loaders (PhysicsNeMo, ACE, WeatherBench 2 readers), on any fsspec
store (a local path or `s3://...`, one code path through zarr):

- Reads are chunk-aligned: a read fetches `read_records` consecutive records, a whole number of the
  store's `outputs` chunks, in one zarr request decoded straight into its buffer slot; the store's
  normalisation statistics are applied in place and the read's forcing-map history is gathered beside it.
- The shuffle buffer is a sliding window of `window` reads over a sequence of reads that visits every
  read holding training records once per epoch, in a fresh permutation each epoch. Batch k sees the
  window starting at read floor(k * batch / (read_records * echo)), so records enter about as fast as
  batches consume them (each record is drawn about `echo` times per epoch: `echo` > 1 is data echoing,
  for when reads limit training), and its records are drawn uniformly (with replacement, like the
  in-memory cache) from the window's training records.
- `workers` background threads run `prefetch` reads ahead of the window; the training loop only
  gathers a batch from memory. On CUDA the slots live in pinned memory and batches are copied with
  `non_blocking=True`.
- Memory is (window + prefetch) read slots, as many as fit the memory budget.

Every batch is a pure function of (seed, step, store), so a run resumed at step k sees the batches an
uninterrupted run sees.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from zarr.core.buffer.cpu import NDBuffer

from diffpipe.errors import DataError

from .batches import Forcing
from .layout import MAP_FORCERS
from .loader import ClimateSamples

EPOCH_STREAM = 7
"""Sub-stream of the seed that orders the reads of each epoch (batch draws use the step)."""


@dataclass(frozen=True)
class StreamShape:
    """How a store is streamed: records per read, slots of the buffer, and bytes per slot."""

    read_records: int
    window: int
    prefetch: int
    slot_bytes: int

    @property
    def slots(self) -> int:
        """Buffer slots: the window plus the reads in flight."""
        return self.window + self.prefetch


def read_size(samples: ClimateSamples, read_records: int | None) -> int:
    """Records per read: `read_records` (default one chunk), checked against the store's chunks (DataError)."""
    outputs, _ = samples.arrays()
    chunks, shape = tuple(outputs.chunks), tuple(outputs.shape)
    where = f"{samples.path}/outputs"
    if chunks[1:] != shape[1:]:
        raise DataError(where, "chunks do not hold whole samples (variable, lat, lon)",
                        expected=str((chunks[0], *shape[1:])), found=str(chunks))
    records = read_records or chunks[0]
    if records % chunks[0]:
        raise DataError("data.stream.read_records", "read request not aligned with the store's chunks",
                        expected=f"a multiple of {chunks[0]} (records per chunk of {where})", found=str(records))
    return records


def stream_shape(samples: ClimateSamples, records: int, prefetch: int, budget_mb: float, reads: int) -> StreamShape:
    """The buffer that fits the memory budget: (window + prefetch) slots of `records` records (DataError if none)."""
    outputs, _ = samples.arrays()
    channels = outputs.shape[1] + samples.history * len(MAP_FORCERS)
    slot_bytes = records * channels * outputs.shape[2] * outputs.shape[3] * 4
    slots = int(budget_mb * 1e6 // slot_bytes)
    if slots < prefetch + 1:
        slot_mb = slot_bytes / 1e6
        raise DataError("data.memory_budget_mb", "too small for the streaming buffer",
                        expected=f"at least {(prefetch + 1) * slot_mb:.4g} MB ({prefetch} prefetched reads and one "
                        f"in use, {slot_mb:.4g} MB each: {records} records of {channels} fields)",
                        found=f"{budget_mb:g}")
    return StreamShape(records, min(slots - prefetch, reads), prefetch, slot_bytes)


class ChunkStream:
    """Batches streamed from the training scenarios of `samples` (see the module docstring).

    `batch` paces the window (the training batch size); `next(gen, n)` may draw any number of records.
    """

    def __init__(self, samples: ClimateSamples, static: torch.Tensor, device: torch.device, seed: int, batch: int,
                 *, read_records: int | None = None, prefetch: int = 4, workers: int = 2, echo: int = 1,
                 budget_mb: float = 2048.0, start_step: int = 0):
        outputs, _ = samples.arrays()
        self.samples, self.static, self.device = samples, static, device
        self.seed, self.batch, self.echo, self.step = seed, batch, echo, start_step
        self.total = outputs.shape[0]
        self.training = np.zeros(self.total, bool)
        self.training[samples.records] = True
        records = read_size(samples, read_records)
        starts = np.arange(0, self.total, records)
        self.reads = np.array([s for s in starts if self.training[s:s + records].any()])
        self.shape = stream_shape(samples, records, prefetch, budget_mb, len(self.reads))
        r, (nv, ny, nx) = self.shape.read_records, outputs.shape[1:]
        pin = device.type == "cuda"
        slots = self.shape.slots
        self.target = torch.empty((slots, r, nv, ny, nx), pin_memory=pin)
        self.maps = torch.empty((slots, r, samples.history * len(MAP_FORCERS), ny, nx), pin_memory=pin)
        self.slot_records = np.full((slots, r), -1, np.int64)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="climate-stream")
        self.pending: dict[int, Future] = {}
        self._orders: dict[int, np.ndarray] = {}

    # -- the schedule (pure functions of seed and step) ----------------------------------------------------
    def read_at(self, position: int) -> int:
        """First record of the read at `position` of the read sequence (a fresh permutation per epoch)."""
        epoch, offset = divmod(position, len(self.reads))
        order = self._orders.get(epoch)
        if order is None:  # threads may compute one twice: the result is the same
            rng = np.random.default_rng([self.seed, EPOCH_STREAM, epoch])
            order = self._orders[epoch] = self.reads[rng.permutation(len(self.reads))]
            self._orders.pop(epoch - 2, None)
        return int(order[offset])

    def window_start(self, step: int) -> int:
        """Position of the first read of the window batch `step` draws from."""
        return step * self.batch // (self.shape.read_records * self.echo)

    def draw(self, step: int, candidates: int, n: int) -> np.ndarray:
        """Positions (into the window's training records) of batch `step`'s `n` records."""
        return np.random.default_rng([self.seed, step]).integers(0, candidates, n)

    # -- reading -----------------------------------------------------------------------------------------
    def _read(self, position: int) -> None:
        """Read, normalise and place the read at `position` in its slot (a background thread)."""
        slot, first = position % self.shape.slots, self.read_at(position)
        s, outputs, maps = self.samples, *self.samples.arrays()
        last = min(first + self.shape.read_records, self.total)
        n = last - first
        target = self.target[slot].numpy()[:n]
        outputs.get_basic_selection(slice(first, last), out=NDBuffer.from_numpy_array(target))
        np.subtract(target, s.out_mean[:, None, None], out=target)
        np.divide(target, s.out_std[:, None, None], out=target)
        steps = s.history_steps(s.record_step[first:last])
        unique, inverse = np.unique(steps, return_inverse=True)
        fields = maps.get_orthogonal_selection((unique,))
        fields = (fields - s.map_mean[:, None, None]) / s.map_std[:, None, None]
        self.maps[slot].numpy()[:n] = fields[inverse.reshape(steps.shape)].reshape(n, -1, *fields.shape[-2:])
        records = np.arange(first, last)
        self.slot_records[slot] = -1
        self.slot_records[slot, :n] = np.where(self.training[first:last], records, -1)

    def _window(self, start: int) -> list[int]:
        """Slots of the window starting at `start`, once read; schedules the reads ahead of it."""
        for position in list(self.pending):
            if position < start:
                self.pending.pop(position).result()
        for position in range(start, start + self.shape.slots):
            if position not in self.pending:
                self.pending[position] = self.pool.submit(self._read, position)
        for position in range(start, start + self.shape.window):
            self.pending[position].result()
        return [p % self.shape.slots for p in range(start, start + self.shape.window)]

    # -- batches -----------------------------------------------------------------------------------------
    def records(self, step: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(flat buffer positions, record ids) of batch `step` of `n` records: reads its window first."""
        slots = self._window(self.window_start(step))
        ids = self.slot_records[slots]
        valid = np.flatnonzero(ids.ravel() >= 0)
        pick = valid[self.draw(step, valid.size, n)]
        r = self.shape.read_records
        flat = np.asarray(slots)[pick // r] * r + pick % r
        return flat, ids.ravel()[pick]

    def next(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, Forcing]:
        """The next batch of `n` records (`gen` is not used: batches are a function of seed and step)."""
        flat, ids = self.records(self.step, n)
        self.step += 1
        index = torch.from_numpy(flat)
        target = self._gather(self.target, index)
        maps = self._gather(self.maps, index)
        s = self.samples
        steps = s.history_steps(s.record_step[ids])
        scalars = torch.from_numpy(s.scalars[steps].reshape(len(ids), -1).astype(np.float32))
        year = torch.from_numpy(s.record_year[ids])
        forcing = Forcing(maps, scalars, year, self.static).to(self.device)
        return target, forcing

    def _gather(self, buffer: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` of a slot buffer, on the training device (through pinned memory on CUDA)."""
        flat = buffer.view(-1, *buffer.shape[2:])
        if self.device.type != "cuda":
            return flat[index]
        out = torch.empty((index.numel(), *flat.shape[1:]), pin_memory=True)
        torch.index_select(flat, 0, index, out=out)
        return out.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the background readers (waits for the reads in flight)."""
        self.pool.shutdown(wait=True, cancel_futures=True)

"""Training batches streamed from a climate store larger than memory: whole chunks, a shuffle buffer, prefetch.

The pattern of the large scientific loaders (PhysicsNeMo, ACE, WeatherBench 2 readers), on any fsspec
store (a local path or `s3://...`, one code path through zarr):

- Reads are chunk-aligned: a read fetches `read_records` consecutive records, a whole number of the
  store's `outputs` chunks, and the store's normalisation statistics are applied in place. The chunks
  are stored uncompressed (`layout.py`), so a read copies each chunk's file straight into its buffer slot
  through fsspec (`ChunkFiles`): one copy, no allocation, where zarr's decode allocates a buffer per
  chunk and copies it again (2-3x slower on a 3.5 MB chunk).
- The forcing maps are per year, shared by every member (50 members: 1/50 of the outputs), so the maps of
  the training years are read once, normalised, and held in memory beside the buffer, like the static
  fields of ACE; a batch gathers its records' history of maps from there.
- The shuffle buffer is a sliding window of `window` reads over a sequence of reads that visits every
  read holding training records once per epoch, in a fresh permutation each epoch. Batch k sees the
  window starting at read floor(k * batch / (read_records * echo)), so records enter about as fast as
  batches consume them (each record is drawn about `echo` times per epoch: `echo` > 1 is data echoing,
  for when reads limit training), and its records are drawn uniformly (with replacement, like the
  in-memory cache) from the window's training records.
- Background threads do all the work: `workers` reader threads run `prefetch` reads ahead of the window,
  and one assembler thread gathers whole batches (`batches_ahead` of them ahead of training, of the size
  last asked for) from the window into fresh tensors; the training loop only takes a finished batch.
  Batches are pinned when the training device is a GPU (`pinned`) and copied with `non_blocking=True`.
- Memory is the maps, (window + prefetch) read slots and the batches ahead, all within the memory budget.

Every batch is a pure function of (seed, step, store), so a run resumed at step k sees the batches an
uninterrupted run sees.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import fsspec
import numpy as np
import torch
from zarr.codecs import BytesCodec

from diffpipe.errors import DataError

from .batches import Forcing, RecordBatch
from .layout import MAP_FORCERS
from .loader import ClimateSamples

EPOCH_STREAM = 7
"""Sub-stream of the seed that orders the reads of each epoch (batch draws use the step)."""


def pinned(device: torch.device) -> bool:
    """Whether host batches are allocated in pinned (page-locked) memory: when they are copied to a GPU."""
    return device.type == "cuda"


@dataclass(frozen=True)
class StreamShape:
    """How a store is streamed: records per read, slots of the buffer, and the bytes each part holds."""

    read_records: int
    window: int
    prefetch: int
    slot_bytes: int
    maps_bytes: int
    batch_bytes: int
    batches_ahead: int

    @property
    def slots(self) -> int:
        """Buffer slots: the window plus the reads in flight."""
        return self.window + self.prefetch

    @property
    def total_bytes(self) -> int:
        """Every byte the stream holds: maps, slots, the batches ahead and the one in use."""
        return self.maps_bytes + self.slots * self.slot_bytes + (self.batches_ahead + 1) * self.batch_bytes


class ChunkFiles:
    """The `outputs` chunk files of a store (local or any fsspec URI), read byte for byte into a buffer."""

    def __init__(self, samples: ClimateSamples):
        outputs, _ = samples.arrays()
        self.where = f"{samples.path}/outputs"
        codecs = outputs.metadata.codecs
        plain = len(codecs) == 1 and isinstance(codecs[0], BytesCodec) and codecs[0].endian.value == "little"
        if not plain or np.dtype(outputs.dtype) != np.dtype("<f4"):
            raise DataError(self.where, "chunks are not stored as raw little-endian float32",
                            expected="uncompressed chunks (as ingest and the builder write them)",
                            found=f"{outputs.dtype}, codecs {[type(c).__name__ for c in codecs]}")
        self.fs, self.root = fsspec.core.url_to_fs(samples.path, **samples.storage_options)
        self.chunk_key = outputs.metadata.encode_chunk_key
        self.records = outputs.chunks[0]

    def read(self, first: int, out: np.ndarray) -> None:
        """Records `first` (the start of a chunk) to `first + len(out)` into `out` (DataError if a chunk is short)."""
        for start in range(0, len(out), self.records):
            part = out[start:start + self.records]
            key = self.chunk_key(((first + start) // self.records, 0, 0, 0))
            path = f"{self.root}/outputs/{key}"
            try:
                with self.fs.open(path, "rb") as f:
                    size = f.readinto(memoryview(part).cast("B"))
            except FileNotFoundError:
                size = 0
            if size != part.nbytes:
                raise DataError(f"{self.where}/{key}", "missing or short chunk", expected=f"{part.nbytes} bytes",
                                found=f"{size}")


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


def stream_shape(samples: ClimateSamples, records: int, prefetch: int, budget_mb: float, reads: int,
                 map_steps: int, batch: int, batches_ahead: int) -> StreamShape:
    """The buffer that fits the memory budget beside the maps and batches: (window + prefetch) slots of
    `records` records (DataError if not even prefetch + 1 fit)."""
    outputs, _ = samples.arrays()
    nv, ny, nx = outputs.shape[1:]
    slot_bytes = records * nv * ny * nx * 4
    maps_bytes = map_steps * len(MAP_FORCERS) * ny * nx * 4
    batch_bytes = batch * (nv + samples.history * len(MAP_FORCERS)) * ny * nx * 4
    fixed = maps_bytes + (batches_ahead + 1) * batch_bytes
    slots = int((budget_mb * 1e6 - fixed) // slot_bytes)
    if slots < prefetch + 1:
        slot_mb = slot_bytes / 1e6
        raise DataError("data.memory_budget_mb", "too small for the streaming buffer",
                        expected=f"at least {((prefetch + 1) * slot_bytes + fixed) / 1e6:.4g} MB ({prefetch} "
                        f"prefetched reads and one in use, {slot_mb:.4g} MB each: {records} records; "
                        f"{maps_bytes / 1e6:.4g} MB of forcing maps; {batches_ahead + 1} batches of "
                        f"{batch_bytes / 1e6:.4g} MB)", found=f"{budget_mb:g}")
    return StreamShape(records, min(slots - prefetch, reads), prefetch, slot_bytes, maps_bytes, batch_bytes,
                       batches_ahead)


class ChunkStream:
    """Batches streamed from the training scenarios of `samples` (see the module docstring).

    `batch` paces the window and sizes the memory of the batches ahead (the training batch size); `next(gen, n)`
    may draw any number of records.
    """

    def __init__(self, samples: ClimateSamples, static: torch.Tensor, device: torch.device, seed: int, batch: int,
                 *, read_records: int | None = None, prefetch: int = 4, workers: int = 2, batches_ahead: int = 2,
                 echo: int = 1, budget_mb: float = 2048.0, start_step: int = 0):
        outputs, _ = samples.arrays()
        self.samples, self.static, self.device = samples, static, device
        self.seed, self.batch, self.echo, self.step = seed, batch, echo, start_step
        self.total = outputs.shape[0]
        self.training = np.zeros(self.total, bool)
        self.training[samples.records] = True
        records = read_size(samples, read_records)
        starts = np.arange(0, self.total, records)
        self.reads = np.array([s for s in starts if self.training[s:s + records].any()])
        self.map_steps = np.unique(samples.history_steps(samples.record_step[samples.records]))
        self.shape = stream_shape(samples, records, prefetch, budget_mb, len(self.reads), self.map_steps.size,
                                  batch, batches_ahead)
        self.pin = pinned(device)
        self.chunks = ChunkFiles(samples)
        self.maps = self._read_maps()
        r, (nv, ny, nx) = self.shape.read_records, outputs.shape[1:]
        self.target = torch.empty((self.shape.slots, r, nv, ny, nx))
        self.slot_records = np.full((self.shape.slots, r), -1, np.int64)
        self.readers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="climate-read")
        self.assembler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="climate-batch")
        self.pending: dict[int, Future] = {}
        self.ahead: dict[int, Future] = {}
        self.ahead_size = batch
        self._orders: dict[int, np.ndarray] = {}

    def _read_maps(self) -> torch.Tensor:
        """(training steps, 2, lat, lon) normalised forcing maps of every year the training records use."""
        s, (_, maps) = self.samples, self.samples.arrays()
        fields = maps.get_orthogonal_selection((self.map_steps,))
        np.subtract(fields, s.map_mean[:, None, None], out=fields)  # in place: no second copy of the maps
        np.divide(fields, s.map_std[:, None, None], out=fields)
        return torch.from_numpy(fields)

    # -- the schedule (pure functions of seed and step) ----------------------------------------------------
    def read_at(self, position: int) -> int:
        """First record of the read at `position` of the read sequence (a fresh permutation per epoch)."""
        epoch, offset = divmod(position, len(self.reads))
        order = self._orders.get(epoch)
        if order is None:
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

    # -- reading (reader threads) ------------------------------------------------------------------------
    def _read(self, position: int) -> None:
        """Read and normalise the read at `position` into its slot."""
        slot, first = position % self.shape.slots, self.read_at(position)
        s, last = self.samples, min(first + self.shape.read_records, self.total)
        target = self.target[slot].numpy()[:last - first]
        self.chunks.read(first, target)
        np.subtract(target, s.out_mean[:, None, None], out=target)
        np.divide(target, s.out_std[:, None, None], out=target)
        self.slot_records[slot] = -1
        self.slot_records[slot, :last - first] = np.where(self.training[first:last], np.arange(first, last), -1)

    def _window(self, start: int) -> list[int]:
        """Slots of the window starting at `start`, once read; schedules the reads ahead of it."""
        for position in list(self.pending):
            if position < start:
                self.pending.pop(position).result()
        for position in range(start, start + self.shape.slots):
            if position not in self.pending:
                self.pending[position] = self.readers.submit(self._read, position)
        for position in range(start, start + self.shape.window):
            self.pending[position].result()
        return [p % self.shape.slots for p in range(start, start + self.shape.window)]

    # -- batches (the assembler thread, one batch after the other) ----------------------------------------
    def records(self, step: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(flat buffer positions, record ids) of batch `step` of `n` records: reads its window first."""
        slots = self._window(self.window_start(step))
        ids = self.slot_records[slots]
        valid = np.flatnonzero(ids.ravel() >= 0)
        pick = valid[self.draw(step, valid.size, n)]
        r = self.shape.read_records
        flat = np.asarray(slots)[pick // r] * r + pick % r
        return flat, ids.ravel()[pick]

    def assemble(self, step: int, n: int) -> RecordBatch:
        """Batch `step` of `n` records gathered from its window into fresh (pinned on a GPU) tensors."""
        flat, ids = self.records(step, n)
        s = self.samples
        target = self._gather(self.target.view(-1, *self.target.shape[2:]), torch.from_numpy(flat))
        steps = s.history_steps(s.record_step[ids])
        rows = torch.from_numpy(np.searchsorted(self.map_steps, steps.ravel()))
        maps = self._gather(self.maps, rows).view(len(ids), -1, *self.maps.shape[-2:])
        scalars = torch.from_numpy(s.scalars[steps].reshape(len(ids), -1).astype(np.float32))
        year = torch.from_numpy(s.record_year[ids])
        return RecordBatch(target, Forcing(maps, scalars, year, self.static), ids)

    def _gather(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """`rows[index]` into a fresh tensor, pinned when batches go to a GPU."""
        out = torch.empty((index.numel(), *rows.shape[1:]), pin_memory=self.pin)
        return torch.index_select(rows, 0, index, out=out)

    # -- the training loop's side --------------------------------------------------------------------------
    def take(self, gen: torch.Generator, n: int) -> RecordBatch:
        """The next batch of `n` records on the host (assembled in the background), with `batches_ahead` more
        of `n` in progress (`gen` is not used). A change of `n` drops the batches ahead and reads the window
        again."""
        if self.ahead and self.ahead_size != n:
            self._drain()
        self.ahead_size = n
        for step in range(self.step, self.step + self.shape.batches_ahead + 1):
            if step not in self.ahead:
                self.ahead[step] = self.assembler.submit(self.assemble, step, n)
        batch = self.ahead.pop(self.step).result()
        self.step += 1
        return batch

    def _drain(self) -> None:
        """Let the batches ahead and the reads in flight finish, then forget them (the next batch reads anew)."""
        wait(self.ahead.values())
        wait(self.pending.values())
        self.ahead.clear()
        self.pending.clear()

    def next(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, Forcing]:
        """The next batch on the training device (`gen` is not used: batches are a function of seed and step)."""
        batch = self.take(gen, n)
        return batch.target.to(self.device, non_blocking=self.pin), self._to_device(batch.forcing)

    def _to_device(self, forcing: Forcing) -> Forcing:
        """The forcing on the training device (the maps copied asynchronously from pinned memory)."""
        return Forcing(forcing.maps.to(self.device, non_blocking=self.pin), forcing.scalars.to(self.device),
                       forcing.year.to(self.device), self.static.to(self.device))

    def close(self) -> None:
        """Stop the background threads (waits for the work in flight)."""
        self.assembler.shutdown(wait=True, cancel_futures=True)
        self.readers.shutdown(wait=True, cancel_futures=True)

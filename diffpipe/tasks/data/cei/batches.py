"""Training batches of CEI events, read from the zarr store chunk by chunk, with detector augmentation.

Memory stays bounded whatever the store size: a batch is drawn from `chunks_per_batch` random store
chunks, and at most MAX_CACHED_EVENTS events' worth of chunks are kept decoded. Every random choice
(chunks, events, rotations, lost ions, momentum noise) comes from the generator the training loop
passes in, so a batch depends only on that generator's state: a resumed run draws the same batches.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from diffpipe.schemas.cei import CeiDetector, CeiTraining

from .augment import drop_ions, random_rotations, rotate, smear_momenta
from .build import open_cei_store
from .charges import masses_from_atomic_numbers

MAX_CACHED_EVENTS = 1_000_000
"""Decoded events kept in memory at most (about 70 MB per 100k events of 9 atoms)."""

EVENT_VARIABLES = ("positions", "momenta", "element", "charge", "mask")


def condition(elements: torch.Tensor, charges: torch.Tensor, momenta: torch.Tensor, mask: torch.Tensor,
              device: torch.device) -> dict[str, torch.Tensor]:
    """The network's condition: elements (long), charges (float, e), momenta (float32, a.u.), mask (bool)."""
    return {"elements": elements.long().to(device), "charges": charges.float().to(device),
            "momenta": momenta.float().to(device), "mask": mask.bool().to(device)}


def detected_momenta(momenta: torch.Tensor, mask: torch.Tensor, detector: CeiDetector,
                     gen: torch.Generator) -> torch.Tensor:
    """Momenta as the detector reports them (resolution noise; zero on undetected ions)."""
    if detector.momentum_resolution_rel == 0.0 and detector.momentum_resolution_au == 0.0:
        return momenta * mask[..., None]
    return smear_momenta(momenta * mask[..., None], mask, detector.momentum_resolution_rel,
                         detector.momentum_resolution_au, gen)


def recentre(positions: torch.Tensor, elements: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Positions (B, A, 3) shifted so the centre of mass of the atoms in `mask` is at 0 (others 0)."""
    weights = torch.from_numpy(masses_from_atomic_numbers(elements.numpy())).to(positions.dtype) * mask
    centre = (weights[..., None] * positions).sum(1, keepdim=True) / weights.sum(1)[:, None, None]
    return (positions - centre) * mask[..., None]


class ChunkedEventBatches:
    """Batches of the training split: clean normalised coordinates x0 (B, A, 3) and the condition dict."""

    def __init__(self, store_path: str, position_scale_bohr: float, detector: CeiDetector,
                 training: CeiTraining, device: torch.device):
        self.events = open_cei_store(store_path, "train")[list(EVENT_VARIABLES)]
        sizes = self.events.chunks["event"]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)])
        self.scale, self.detector, self.training, self.device = position_scale_bohr, detector, training, device
        self.capacity = max(training.chunks_per_batch, MAX_CACHED_EVENTS // max(sizes))
        self.cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def chunk(self, index: int) -> dict[str, np.ndarray]:
        """The decoded arrays of one store chunk (least recently used chunks are evicted)."""
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        part = self.events.isel(event=slice(int(self.bounds[index]), int(self.bounds[index + 1]))).load()
        self.cache[index] = {name: part[name].values for name in EVENT_VARIABLES}
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return self.cache[index]

    def next(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """n events drawn uniformly from `chunks_per_batch` random chunks, augmented."""
        n_chunks = len(self.bounds) - 1
        picked = torch.randperm(n_chunks, generator=gen)[: self.training.chunks_per_batch].tolist()
        arrays = [self.chunk(i) for i in sorted(picked)]
        pool = {name: np.concatenate([a[name] for a in arrays]) for name in EVENT_VARIABLES}
        rows = torch.randint(0, len(pool["mask"]), (n,), generator=gen).numpy()
        batch = {name: torch.from_numpy(pool[name][rows]) for name in EVENT_VARIABLES}
        return self.augment(batch, gen)

    def augment(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        """Rotate (positions and momenta together), drop ions, smear momenta; normalise coordinates."""
        positions, momenta = batch["positions"].double(), batch["momenta"].double()
        elements, charges, mask = batch["element"].long(), batch["charge"].long(), batch["mask"].bool()
        if self.training.rotate_batches:
            rotations = random_rotations(len(mask), gen)
            positions, momenta = rotate(positions, rotations), rotate(momenta, rotations)
        if self.detector.ion_loss_probability > 0.0:
            mask = drop_ions(mask, self.detector.ion_loss_probability, self.detector.min_detected_ions, gen)
            positions = recentre(positions, elements, mask)
        momenta = detected_momenta(momenta, mask, self.detector, gen)
        x0 = (positions * mask[..., None] / self.scale).float().to(self.device)
        return x0, condition(elements * mask, charges * mask, momenta, mask, self.device)

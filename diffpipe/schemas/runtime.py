"""Where and how stages run: device, precision, seed, Dask, threads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Strict


class RuntimeSpec(Strict):
    """Execution settings shared by every stage of a pipeline."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` picks CUDA when a GPU is present, else the CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto` is bf16 autocast on CUDA and fp32 on the CPU."""
    seed: int = 0
    """Base random seed; every stage derives its own generator from it."""
    num_threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads (None: torch's default)."""
    dask_address: str | None = None
    """Address of a running Dask scheduler; None starts a LocalCluster when a stage needs one."""
    dask_workers: int = Field(default=2, ge=1)
    """Workers of the LocalCluster started when no `dask_address` is given."""

"""Where and how stages run: device, precision, seed, Dask, threads, processes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Strict


class DistributedSpec(Strict):
    """Training stages across processes and machines, with torchrun's meanings (`torch.distributed.run`).

    Training stages (pretrain, midtrain, distill, rl) with more than one process in all are started
    through torch's elastic launcher; every other stage stays in one process. `batch_size` stays the
    global batch at any world size.
    """

    nproc_per_node: int = Field(default=1, ge=1)
    """Processes on this machine: at most its GPUs on CUDA, its usable CPU cores on the CPU."""
    nnodes: int = Field(default=1, ge=1)
    """Machines taking part; each runs `diffpipe run` (one launcher per machine)."""
    node_rank: int = Field(default=0, ge=0)
    """This machine's index, 0..nnodes-1; node 0 runs the pipeline and publishes, the others join its stages."""
    rdzv_endpoint: str | None = None
    """`host:port` of the c10d rendezvous (node 0's address); None on one machine (a free local port)."""
    rdzv_timeout_s: int = Field(default=300, ge=1)
    """How long a launcher waits for every node to join the rendezvous, and a rank for the others in a collective."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """`ddp`: DistributedDataParallel (replicated weights); `fsdp`: FSDP2 `fully_shard` (sharded weights)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Collective backend; `auto` is nccl on CUDA and gloo on the CPU."""

    @property
    def world_size(self) -> int:
        """Processes in all."""
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _check_nodes(self) -> DistributedSpec:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank must be below nnodes ({self.nnodes}); found {self.node_rank}")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError("rdzv_endpoint (host:port of node 0) is needed when nnodes > 1; found none")
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"rdzv_endpoint must be host:port; found {self.rdzv_endpoint!r}")
        return self


class RuntimeSpec(Strict):
    """Execution settings shared by every stage of a pipeline."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` picks CUDA when a GPU is present, else the CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto` is bf16 autocast on CUDA and fp32 on the CPU."""
    seed: int = 0
    """Base random seed; every stage derives its own generator from it."""
    num_threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads of each stage (None: the cores shared by the stages running at once; 1 per
    process in a distributed stage)."""
    max_parallel_stages: int | None = Field(default=None, ge=1)
    """Stages (of a pipeline, or of every cell of a sweep) run at once; None: one per CPU core."""
    dask_address: str | None = None
    """Address of a running Dask scheduler: stages run on its workers (prefect-dask's DaskTaskRunner) and
    data builds use it; None runs stages in threads and starts a LocalCluster when a data build needs one."""
    dask_workers: int = Field(default=2, ge=1)
    """Workers of the LocalCluster started when no `dask_address` is given."""
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    """Processes and machines of training stages (default: one process)."""

"""What one training rank needs about the others: its rows of the global batch, DDP / FSDP2, reductions, full states.

Without a process group (every stage run in one process) each helper is the identity: the rank is 0
of 1, `local_rows` returns the whole batch and nothing is wrapped.

The randomness contract that makes a run independent of its world size: inside a training step every
rank draws the *global* batch (data indices, condition dropout, noise, times) from the same generator,
then computes only its contiguous rows (`local_rows`). Each rank's loss is the mean over its rows and
DDP / FSDP2 average the gradients over ranks, which is the global mean when the rows split evenly
(`check_divisible`). Results then differ from one process only by the order in which float sums run.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from .conditions import select_conditions

STRATEGY_ENV = "DIFFPIPE_DISTRIBUTED_STRATEGY"
"""Environment variable through which the launcher tells every rank `runtime.distributed.strategy`."""

FULL = StateDictOptions(full_state_dict=True)
"""Whole (unsharded) tensors on every rank: what checkpoints hold, so a resume may change the world size."""

GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True)
"""Whole tensors gathered onto rank 0's CPU (the other ranks get an empty state dict)."""

BROADCAST = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=True)
"""Rank 0's whole state dict broadcast into every rank's plain (unsharded) module, one tensor at a time."""


def active() -> bool:
    """Whether this process is one rank of several (a process group is up)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes checkpoints, outputs and logs (global rank 0)."""
    return rank() == 0


def collective_device() -> torch.device:
    """Where tensors for the group's collectives live: this rank's GPU under nccl, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def check_divisible(n: int, what: str) -> None:
    """Fail unless a global batch of `n` rows splits evenly over the ranks."""
    if n % world_size():
        raise ValueError(f"{what} {n} does not split evenly over {world_size()} processes")


def local_slice(n: int) -> slice:
    """This rank's contiguous rows of a global batch of `n` rows."""
    check_divisible(n, "a global batch of")
    per = n // world_size()
    return slice(rank() * per, (rank() + 1) * per)


def local_rows(batch: torch.Tensor, *others: Any) -> tuple[Any, ...]:
    """This rank's rows of `batch` and of every other global-batch tensor or condition structure.

    A batch that does not split evenly is returned whole (every rank computes it all, which is still the
    gradient of its mean after DDP / FSDP2 average): the launcher refuses uneven `batch_size`s, so this only
    happens to losses whose row count is their own (CMT's state pairs).
    """
    if batch.shape[0] % world_size():
        return (batch, *others)
    rows = local_slice(batch.shape[0])
    if rows == slice(0, batch.shape[0]):
        return (batch, *others)
    index = torch.arange(rows.start, rows.stop)
    return (batch[rows], *(select_conditions(o, index) for o in others))


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over the ranks: the global-batch loss from each rank's mean."""
    if not active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def sum_over_ranks(value: int) -> int:
    """An integer summed over the ranks (FLOPs of one step)."""
    if not active():
        return value
    out = torch.tensor(value, dtype=torch.float64, device=collective_device())
    dist.all_reduce(out)
    return int(out.item())


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank (every rank gets the same answer: a stop request is obeyed together)."""
    if not active():
        return flag
    out = torch.tensor(float(flag), device=collective_device())
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return bool(out.item())


def all_gather_rows(value: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's rows of `value` concatenated in rank order along `dim` (the global batch), on its device."""
    if not active():
        return value
    sent = value.to(collective_device(), torch.uint8 if value.dtype == torch.bool else value.dtype).contiguous()
    parts = [torch.empty_like(sent) for _ in range(world_size())]
    dist.all_gather(parts, sent)
    return torch.cat(parts, dim).to(value.device, value.dtype)


def sharded_rows(fn: Callable[..., tuple[torch.Tensor, ...]]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """`fn` of global-batch tensors, run on this rank's rows of each; its outputs gathered from every rank.

    For per-row work without gradients, such as scoring rollouts with a verifier: every rank gets the
    whole batch's outputs, each rank having computed 1 / world_size of them (all of them when the batch
    does not split evenly).
    """
    def on_own_rows(*batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if batch[0].shape[0] % world_size() or not active():
            return fn(*batch)
        rows = local_slice(batch[0].shape[0])
        return tuple(all_gather_rows(out) for out in fn(*(b[rows] for b in batch)))

    return on_own_rows


class GatherRows(torch.autograd.Function):
    """Every rank's rows in rank order; backward: the sum over ranks of the gradient of this rank's rows.

    The backward is an all-reduce of the whole gradient (every backend has one; gloo has no
    reduce-scatter) from which this rank keeps its rows, i.e. a reduce-scatter.
    """

    @staticmethod
    def forward(ctx: Any, own: torch.Tensor) -> torch.Tensor:
        """Gather the ranks' rows (as `all_gather_rows`)."""
        ctx.rows = slice(rank() * own.shape[0], (rank() + 1) * own.shape[0])
        return all_gather_rows(own)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the gradient summed over ranks."""
        total = grad.to(collective_device()).contiguous()
        dist.all_reduce(total)
        return total[ctx.rows].to(grad.device)


class RowSharded(nn.Module):
    """A model called with a global batch that runs this rank's rows and returns every rank's output rows.

    Every rank calls it with the same batch and gets the same output, having run 1 / world_size of the
    rows through `model`. The gather is differentiable (`GatherRows`), so when every rank computes the
    same loss from the whole output, each rank's parameter gradient is world_size times its rows' share
    and the average that DDP / FSDP2 take is the gradient of that loss: a loss over whole groups of rows
    (group-normalised advantages, token means over the batch) is sharded without being rewritten. A
    batch that does not split evenly runs whole on every rank (replicated: the averaged gradient is then
    each rank's own). The model's outputs are gathered, so this suits models whose output per row is
    small (the masked-diffusion LMs' logits over a small vocabulary, a neural sampler's control): the
    gradient is exact also through chains of calls, as a rollout differentiated along its whole path,
    since every cross-rank dependency goes through the gather, whose backward is its adjoint.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self) -> Any:
        """The wrapped (diffusers) model's config."""
        return self.model.config

    def forward(self, batch: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        """The model's output for every row of `batch` (and of the other per-row inputs, as a sampler's times),
        this rank's rows computed here."""
        return on_own_rows(self.model, batch, *others)


def on_own_rows(fn: Callable[..., torch.Tensor], batch: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """`fn` of global-batch tensors run on this rank's rows, every rank's output rows gathered differentiably
    (`GatherRows`; as `RowSharded`, for functions such as an energy target's log density). A batch that does not
    split evenly, or one process, runs whole."""
    if not active() or batch.shape[0] % world_size():
        return fn(batch, *others)
    rows = local_slice(batch.shape[0])
    return GatherRows.apply(fn(batch[rows], *(o[rows] for o in others)))


def row_sharded(model: nn.Module) -> nn.Module:
    """`model` itself in one process, else `RowSharded(model)`."""
    return RowSharded(model) if active() else model


class StepModule(nn.Module):
    """One whole training step as a module, so that DDP sees one forward per backward however often it calls the net."""

    def __init__(self, model: nn.Module, step: Any):
        super().__init__()
        self.model, self.step = model, step

    def forward(self, gen: torch.Generator) -> torch.Tensor:
        """The step's loss."""
        return self.step(gen)


class Wrapped:
    """A model prepared for the strategy in use, and the plain trained model once training ends (`unwrap`).

    Under FSDP2 the model is sharded in place; a plain (unsharded) copy kept on the CPU receives the
    gathered whole weights at the end, so the sharded module is never turned back into a plain one.
    """

    def __init__(self, model: nn.Module, step: Any, device: torch.device):
        self.model, self.step, self.device = model, step, device
        self.strategy = strategy() if active() else None
        self.plain: nn.Module | None = None
        if self.strategy == "ddp":
            ids = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else None
            self.step = DistributedDataParallel(StepModule(model, step), device_ids=ids)
        elif self.strategy == "fsdp":
            self.plain = copy.deepcopy(model).to("cpu")
            shard(model)

    def loss(self, gen: torch.Generator) -> torch.Tensor:
        """Run the step's loss (through DDP's forward when DDP is in use)."""
        return self.step(gen)

    def unwrap(self) -> nn.Module:
        """The trained model as a plain module on the training device, on every rank (every rank takes part).

        Without FSDP2 that is the model itself (DDP wraps the step, not the model). Under FSDP2 rank 0
        gathers the whole state dict onto its CPU one tensor at a time (`GATHERED`) and broadcasts it into
        every rank's plain copy (`BROADCAST`): no GPU holds more than one whole tensor at a time.
        """
        if self.plain is None:
            return self.model
        state = get_model_state_dict(self.model, options=GATHERED)
        set_model_state_dict(self.plain, state, options=BROADCAST)
        return self.plain.to(self.device)


def frozen_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A frozen eval-mode copy of `model` on `device` (an RL reference model); FSDP2-sharded under `fsdp`, so it
    costs each rank its share of the weights like the policy (every rank calls it with the same batches)."""
    frozen = copy.deepcopy(model).requires_grad_(False).eval().to(device)
    if active() and strategy() == "fsdp":
        fully_shard(frozen)
    return frozen


def strategy() -> str:
    """`ddp` or `fsdp`, as the launcher set it for every rank."""
    return os.environ.get(STRATEGY_ENV, "ddp")


def shard(model: nn.Module) -> None:
    """FSDP2: each block of the model's module lists, then the root (so blocks are gathered one at a time)."""
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    if len(dtypes) > 1:  # fully_shard would only fail at the first forward
        raise FsdpRefused(f"FSDP2 shards parameters of one dtype; {type(model).__name__} has {', '.join(dtypes)}")
    try:
        for child in model.children():
            if isinstance(child, nn.ModuleList):
                for block in child:
                    if any(p.requires_grad for p in block.parameters()):
                        fully_shard(block)
        fully_shard(model)
    except Exception as e:  # noqa: BLE001 - any refusal of fully_shard is the user's model choice
        raise FsdpRefused(f"FSDP2 cannot shard {type(model).__name__}: {e.__class__.__name__}: {e}") from e


class FsdpRefused(RuntimeError):
    """`fully_shard` refused the model (the launcher reports it against `runtime.distributed.strategy`)."""


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict (gathered under FSDP2; every rank takes part)."""
    return get_model_state_dict(model, options=FULL) if isinstance(model, FSDPModule) else model.state_dict()


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict into a plain or FSDP2-sharded model."""
    if isinstance(model, FSDPModule):
        set_model_state_dict(model, state, options=FULL)
    else:
        model.load_state_dict(state)


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter names, with whole tensors (the same at any world size)."""
    return get_optimizer_state_dict(model, opt, options=FULL)


def load_full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimizer state saved by `full_optimizer_state` (sharding it under FSDP2)."""
    set_optimizer_state_dict(model, opt, state, options=FULL)


def full_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Whole tensors of (possibly sharded) DTensors: EMA shadows under FSDP2."""
    return [t.full_tensor() if isinstance(t, DTensor) else t for t in tensors]


def like_parameters(full: list[torch.Tensor], params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Whole tensors placed like `params` (sharded where they are DTensors)."""
    return [distribute_tensor(f.to(p.device), p.device_mesh, p.placements) if isinstance(p, DTensor)
            else f.to(p.device) for f, p in zip(full, params, strict=True)]


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip gradients to a global norm over every rank (FSDP2's sharded gradients are reduced first)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm

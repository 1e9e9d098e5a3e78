"""Sampling with any diffusers scheduler: the loop, classifier-free guidance, NFE counting."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers import SchedulerMixin
from torch.utils.flop_counter import FlopCounterMode

from diffpipe.schemas import Objective

from .flowmap.sampling import sample_two_time
from .objectives import NetFn
from .schedulers import net_timestep

if TYPE_CHECKING:
    from .search.run import SearchRun


@dataclass
class CountingNet:
    """Wraps a network function; counts batched calls, rows evaluated, and the FLOPs of its first call.

    The first argument of a call is the batch (noisy samples for `net(x, t, cond)`, token ids for a
    token model's `model(ids)`); its first dimension is the number of evaluations.
    """

    net: NetFn
    calls: int = 0
    rows: int = 0
    """Network evaluations: the rows of every call summed (one sample at one time is one evaluation)."""
    flops_per_row: float | None = None
    """FLOPs of one evaluation, from torch's FlopCounterMode on the first call (matmuls and convolutions)."""
    flop_count_s: float = 0.0
    """Wall seconds of that counted first call (slower than the others: the counter intercepts every op)."""

    def __call__(self, x: torch.Tensor, *rest: Any) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        if self.flops_per_row is not None:
            return self.net(x, *rest)
        started = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            out = self.net(x, *rest)
        self.flop_count_s = time.perf_counter() - started
        self.flops_per_row = counter.get_total_flops() / x.shape[0]
        return out

    def costs(self, num_samples: int) -> dict[str, Any]:
        """Network evaluations per output sample, FLOPs per evaluation and in total, as stage metrics."""
        flops = None if self.flops_per_row is None else self.flops_per_row * self.rows
        return {"network_evaluations_per_sample": self.rows / max(1, num_samples),
                "flops_per_evaluation": self.flops_per_row, "sampling_flops": flops,
                "network_calls": self.calls, "flop_count_s": self.flop_count_s}


def guided(net: NetFn, null_label: int | None, scale: float) -> NetFn:
    """Classifier-free guidance: uncond + scale * (cond - uncond), one batched call."""
    if scale == 1.0 or null_label is None:
        return net

    def fn(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
           r_timestep: torch.Tensor | None = None) -> torch.Tensor:
        r = None if r_timestep is None else torch.cat([r_timestep, r_timestep])
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, null_label)]), r)
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return fn


@torch.no_grad()
def sample(
    net: NetFn, objective: Objective, scheduler: SchedulerMixin | None, steps: int, shape: tuple[int, ...],
    labels: Any, gen: torch.Generator, device: torch.device, search: SearchRun | None = None,
) -> torch.Tensor:
    """Integrate the scheduler from noise to data for a batch of `shape` (regression: one direct call).

    With a `search`, the search method draws the batch instead, spending its own network evaluations.
    """
    if search is not None:
        return search.draw(net, steps, shape, labels, gen, device, getattr(objective, "two_time", False))
    if scheduler is None:
        zeros = torch.zeros(shape, device=device)
        return net(zeros, torch.zeros(shape[0], device=device), labels)
    scheduler.set_timesteps(steps, device=device)
    x = torch.randn(shape, generator=gen).to(device) * getattr(scheduler, "init_noise_sigma", 1.0)
    if getattr(objective, "two_time", False):
        return sample_two_time(net, objective.kind, scheduler, steps, x, labels, gen)
    step_kwargs = {"generator": gen} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        xin = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        tt = t.to(device).expand(shape[0])
        out = net(xin, net_timestep(objective, tt), labels)
        x = scheduler.step(out.float(), t, x, **step_kwargs).prev_sample
    return x

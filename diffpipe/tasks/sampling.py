"""Sampling with any diffusers scheduler: the loop, classifier-free guidance, NFE counting."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers import SchedulerMixin

from diffpipe.schemas import Objective

from .flowmap.sampling import sample_two_time
from .objectives import NetFn, net_timestep


@dataclass
class CountingNet:
    """Wraps a network function and counts function evaluations (one per batched call)."""

    net: NetFn
    calls: int = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        self.calls += 1
        return self.net(x, t, labels)


def guided(net: NetFn, null_label: int | None, scale: float) -> NetFn:
    """Classifier-free guidance: uncond + scale * (cond - uncond), one batched call."""
    if scale == 1.0 or null_label is None:
        return net

    def fn(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, null_label)]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return fn


@torch.no_grad()
def sample(
    net: NetFn, objective: Objective, scheduler: SchedulerMixin | None, steps: int, shape: tuple[int, ...],
    labels: torch.Tensor | None, gen: torch.Generator, device: torch.device,
) -> torch.Tensor:
    """Integrate the scheduler from noise to data for a batch of `shape` (regression: one direct call)."""
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

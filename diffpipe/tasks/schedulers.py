"""diffusers schedulers configured for how a checkpoint was trained, and the network time they step in."""

from __future__ import annotations

import inspect
from typing import Any

import diffusers
import torch
from diffusers import SchedulerMixin

from diffpipe.schemas import DDPM, EDM, FlowMatching, Objective, Regression

from .objectives.edm import edm_net_timestep


def scheduler_defaults(spec: Objective, name: str) -> dict[str, Any]:
    """Constructor arguments that make scheduler `name` match how `spec` was trained."""
    if isinstance(spec, FlowMatching):
        if name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
            return {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}
        return {}
    if isinstance(spec, DDPM):
        out = {"num_train_timesteps": spec.num_train_timesteps, "beta_schedule": spec.beta_schedule,
               "prediction_type": spec.prediction}
        if "timestep_spacing" in inspect.signature(getattr(diffusers, name).__init__).parameters:
            out["timestep_spacing"] = "trailing"  # start sampling at the last training step (pure noise)
        return out
    if isinstance(spec, EDM):
        return {"sigma_min": spec.sigma_min, "sigma_max": spec.sigma_max, "sigma_data": spec.sigma_data}
    return {}


def make_scheduler(spec: Objective, name: str | None, options: dict[str, Any]) -> SchedulerMixin | None:
    """A diffusers scheduler configured for the objective, with user options on top (None: regression)."""
    if isinstance(spec, Regression):
        return None
    name = name or spec.default_scheduler
    cls = getattr(diffusers, name)
    return cls(**{**scheduler_defaults(spec, name), **options})


def net_timestep(spec: Objective, scheduler_timestep: torch.Tensor) -> torch.Tensor:
    """The network's time input for a scheduler timestep (EDM: 0.25 ln sigma -> 1000 t)."""
    if isinstance(spec, EDM):
        return edm_net_timestep(torch.exp(4.0 * scheduler_timestep.float()))
    return scheduler_timestep

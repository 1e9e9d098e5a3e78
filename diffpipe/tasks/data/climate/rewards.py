"""Reward plugin for climate emulation: agreement of the global-mean tas with the response its forcing implies."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from diffpipe.tasks.rl.rewards import reward


@lru_cache(maxsize=4)
def _forcing_response(data_path: Path):  # noqa: ANN202 (the climate module is imported lazily)
    from diffpipe.tasks.data.climate.domain import STORE
    from diffpipe.tasks.data.climate.response import ForcingResponse

    return ForcingResponse.from_store(data_path / STORE)


@reward("global_mean_response", kinds=("climate",))
@torch.no_grad()
def global_mean_response(samples: torch.Tensor, conditions: Any, data_path: Path) -> torch.Tensor:
    """Minus |global-mean tas of the generated field - the global-mean tas its forcing implies|, in kelvin.

    The implied response is the closed-form regression of ensemble-mean global tas on the global forcers
    (cumulative CO2, CH4, area-mean SO2 and BC), fitted on the training scenarios
    (tasks/data/climate/response.py); samples are the emulator's normalised (variable, lat, lon) fields.
    """
    judge = _forcing_response(Path(data_path))
    return -(judge.generated(samples) - judge.implied(conditions)).abs().float().to(samples.device)

"""Reward plugin for Coulomb explosion imaging: the physics round trip of a generated geometry."""

from __future__ import annotations

from pathlib import Path

import torch

from diffpipe.tasks.rl.rewards import reward

ROUND_TRIP_CAP = 10.0
"""Relative momentum errors above this (or non-finite: colliding atoms) score -ROUND_TRIP_CAP."""


@reward("physics_round_trip", kinds=("coulomb_explosion",))
@torch.no_grad()
def physics_round_trip(samples: torch.Tensor, conditions: dict[str, torch.Tensor], data_path: Path) -> torch.Tensor:
    """Minus ||p_sim - p_obs|| / ||p_obs||: the generated geometry re-exploded with the observed charges.

    Samples are coordinates divided by the data's `position_scale_bohr`; the condition holds the observed
    `momenta`, `charges`, `elements` and `mask` (the CEI domain's batches). The Coulomb explosion is
    `simulate_explosion` (tasks/data/cei/forward.py), through the evaluate stage's round-trip metric.
    """
    from diffpipe.storage.formats import read_json
    from diffpipe.tasks.data.cei.domain import SETTINGS_FILE
    from diffpipe.tasks.metrics.cei import momentum_round_trip

    scale = read_json(Path(data_path) / SETTINGS_FILE)["position_scale_bohr"]
    mask = conditions["mask"].bool().cpu()
    positions = samples.detach().double().cpu() * scale * mask[..., None]
    error = momentum_round_trip(positions.numpy(), conditions["charges"].double().cpu().numpy(),
                                conditions["elements"].long().cpu().numpy(), mask.numpy(),
                                conditions["momenta"].double().cpu().numpy())
    error = torch.nan_to_num(torch.from_numpy(error), nan=ROUND_TRIP_CAP, posinf=ROUND_TRIP_CAP)
    return -error.clamp(max=ROUND_TRIP_CAP).float().to(samples.device)

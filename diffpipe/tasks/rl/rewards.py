"""Reward plugins by name: `reward(samples, conditions, data_path) -> (N,)` float tensor, higher is better.

A reward sees the generated samples, the conditions they were generated for (as the domain's batch
source returns them, repeated per sample) and the folder of the data artifact (for frozen judges or
observations stored with the data). Rewards are verifiable: no learned judge beyond a frozen one
stored with the data. Register a new one with `@reward("name", kinds=("datakind",))`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from diffpipe.errors import SpecError
from diffpipe.tasks.registry import REGISTERED, REWARD_MODULES, get_implementation, register

RewardFn = Callable[[torch.Tensor, Any, Path], torch.Tensor]
"""(samples (N, ...), conditions for those samples, data artifact folder) -> rewards (N,)."""


@dataclass(frozen=True)
class RewardPlugin:
    """A registered reward: its function and the data kinds it applies to."""

    name: str
    fn: RewardFn
    kinds: frozenset[str]


REWARDS: dict[str, RewardPlugin] = REGISTERED.setdefault("reward", {})
"""Reward plugins registered so far, by name (each name's module is in the registry's `REWARD_MODULES`)."""


def reward(name: str, kinds: tuple[str, ...]) -> Callable[[RewardFn], RewardFn]:
    """Register `fn` as the reward `name` for data of `kinds` (list `name` in `REWARD_MODULES` too)."""

    def decorate(fn: RewardFn) -> RewardFn:
        register("reward", name, RewardPlugin(name, fn, frozenset(kinds)))
        return fn

    return decorate


def resolve_reward(name: str, data_kind: str, where: str) -> RewardPlugin:
    """The plugin called `name`, checked against the data kind; SpecError naming `where` otherwise."""
    if name not in REWARD_MODULES:
        raise SpecError(where, "unknown reward", "one of " + ", ".join(sorted(REWARD_MODULES)), repr(name))
    plugin = get_implementation("reward", name)
    if data_kind not in plugin.kinds:
        raise SpecError(where, f"reward '{name}' does not apply to {data_kind} data",
                        "a reward for " + data_kind, "one for " + ", ".join(sorted(plugin.kinds)))
    return plugin


@lru_cache(maxsize=4)
def _digits_classifier(data_path: Path) -> torch.nn.Module:
    from diffpipe.tasks.data.digits import DigitsDomain

    return DigitsDomain().classifier(data_path).requires_grad_(False)


@reward("classifier_logprob", kinds=("digits",))
@torch.no_grad()
def classifier_logprob(samples: torch.Tensor, conditions: torch.Tensor | None, data_path: Path) -> torch.Tensor:
    """Log-probability of the requested digit under the frozen classifier (unconditional: of its top class)."""
    clf = _digits_classifier(Path(data_path))
    logp = clf(samples.detach().float().cpu()).log_softmax(1)
    if conditions is None:
        return logp.max(1).values.to(samples.device)
    return logp.gather(1, conditions.long().cpu().view(-1, 1)).squeeze(1).to(samples.device)


@reward("ink", kinds=("digits",))
@torch.no_grad()
def ink(samples: torch.Tensor, conditions: Any, data_path: Path) -> torch.Tensor:
    """Total ink: the mean of (x + 1) / 2 over pixels, unclipped, so it is deliberately hackable."""
    return ((samples.detach().float() + 1.0) / 2.0).flatten(1).mean(1)


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

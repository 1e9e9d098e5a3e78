"""Reward plugins by name: `reward(samples, conditions, data_path) -> (N,)` float tensor, higher is better.

A reward sees the generated samples, the conditions they were generated for (as the domain's batch
source returns them, repeated per sample) and the folder of the data artifact (for frozen judges or
observations stored with the data). Rewards are verifiable: no learned judge beyond a frozen one
stored with the data. Register a new one with `@reward("name", kinds=("datakind",))` in its domain's
rewards module and list that module under the name in the registry's `REWARD_MODULES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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

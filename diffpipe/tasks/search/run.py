"""A sample stage's search, bound to its reward and data: the domains' samplers call `draw` per batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffpipe.schemas import SampleStage

from ..objectives import NetFn
from ..registry import get_search
from ..rl.rewards import resolve_reward
from .particles import ContinuousProblem, SearchResult


@dataclass
class SearchRun:
    """The stage's search method with its reward; accumulates rewards, NFE and wall time over batches."""

    spec: Any
    reward: Any
    data_path: Path
    where: str
    results: list[SearchResult] = field(default_factory=list)
    wall_s: float = 0.0

    def draw(self, net: NetFn, steps: int, shape: tuple[int, ...], cond: Any, gen: torch.Generator,
             device: torch.device) -> torch.Tensor:
        """One batch of `shape[0]` samples for conditions `cond`, drawn by the search method."""
        reward = None if self.reward is None else (lambda x, c: self.reward.fn(x, c, self.data_path).float())
        problem = ContinuousProblem(net, shape, cond, steps, reward, gen, device)
        started = time.perf_counter()
        result = get_search(self.spec.method)(self.spec, problem)
        self.wall_s += time.perf_counter() - started
        self.results.append(result)
        return result.x

    def metrics(self) -> dict[str, Any]:
        """Method, NFE per output sample and the reward of the returned samples, as stage metrics."""
        n = sum(r.x.shape[0] for r in self.results)
        out: dict[str, Any] = {"search": self.spec.method, "search_wall_s": self.wall_s,
                               "nfe_per_sample": sum(r.evaluations for r in self.results) / max(1, n)}
        rewards = [r.rewards for r in self.results if r.rewards is not None]
        if rewards:
            out["search_reward_mean"] = float(torch.cat(rewards).float().mean())
        for key in self.results[0].stats if self.results else ():
            out[f"search_{key}"] = sum(r.stats[key] for r in self.results) / len(self.results)
        return out


def make_search(spec: SampleStage, data_kind: str, data_path: Path, where: str) -> SearchRun | None:
    """The bound search of a sample stage (None when it samples plainly); `where` names the stage's field."""
    if spec.search is None:
        return None
    name = getattr(spec.search, "reward", None)
    reward = None if name is None else resolve_reward(name, data_kind, f"{where}.reward")
    return SearchRun(spec.search, reward, data_path, where)

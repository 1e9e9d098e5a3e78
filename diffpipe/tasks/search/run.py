"""A sample stage's search, bound to its reward, data and models: the domains' samplers call it per batch.

Continuous samplers call `SearchRun.draw`; token samplers `masked.complete(run, ...)`, so that image domains
import no masked-diffusion code (their cache keys stay free of it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffpipe.schemas import SampleStage

from ..context import StageContext
from ..objectives import NetFn
from ..registry import get_search
from ..rl.rewards import RewardPlugin, resolve_reward
from ..sample import load_checkpoint
from ..sampling import CountingNet
from .particles import ContinuousProblem, SearchResult

if TYPE_CHECKING:
    from .masked import Logits, MaskedProblem


@dataclass
class SearchRun:
    """The stage's search method with its reward; accumulates rewards, NFE and wall time over batches."""

    spec: Any
    reward: RewardPlugin | None
    data_path: Path
    reference: Logits | None = None
    results: list[SearchResult] = field(default_factory=list)
    wall_s: float = 0.0
    flops_per_evaluation: float | None = None
    """FLOPs of one evaluation of the sampled network (from its CountingNet), for the search's FLOP total."""

    def draw(self, net: NetFn, steps: int, shape: tuple[int, ...], cond: Any, gen: torch.Generator,
             device: torch.device, two_time: bool = False) -> torch.Tensor:
        """One batch of `shape[0]` continuous samples for conditions `cond`, drawn by the search method
        (`two_time`: the net is a flow map, stepped with its mean velocity over each step)."""
        return self.solve(ContinuousProblem(net, shape, cond, steps, self.reward_of(), gen, device, two_time))

    def solve(self, problem: ContinuousProblem | MaskedProblem) -> torch.Tensor:
        """Run the method on one batch and keep its result for the metrics."""
        started = time.perf_counter()
        result = get_search(self.spec.method)(self.spec, problem)
        self.wall_s += time.perf_counter() - started
        self.results.append(result)
        net = problem.net if isinstance(problem, ContinuousProblem) else problem.model
        self.flops_per_evaluation = getattr(net, "flops_per_row", None)
        return result.x

    def reward_of(self) -> Any:
        """(samples, conditions) -> rewards with the data folder bound (None without a reward)."""
        if self.reward is None:
            return None
        return lambda x, c: self.reward.fn(x, c, self.data_path).float()

    def metrics(self) -> dict[str, Any]:
        """Method, NFE and FLOPs per output sample (every evaluation the search made, worker processes
        included), and the reward of the returned samples, as stage metrics."""
        n, evaluations = sum(r.x.shape[0] for r in self.results), sum(r.evaluations for r in self.results)
        flops = None if self.flops_per_evaluation is None else self.flops_per_evaluation * evaluations
        out: dict[str, Any] = {"search": self.spec.method, "search_wall_s": self.wall_s,
                               "nfe_per_sample": evaluations / max(1, n),
                               "network_evaluations_per_sample": evaluations / max(1, n), "sampling_flops": flops}
        rewards = [r.rewards for r in self.results if r.rewards is not None]
        if rewards:
            out["search_reward_mean"] = float(torch.cat(rewards).float().mean())
        for key in self.results[0].stats if self.results else ():
            out[f"search_{key}"] = sum(r.stats[key] for r in self.results) / len(self.results)
        return out


def make_search(ctx: StageContext, spec: SampleStage) -> SearchRun | None:
    """The bound search of a sample stage (None when it samples plainly), with RFG's reference model loaded."""
    if spec.search is None:
        return None
    name = getattr(spec.search, "reward", None)
    reward = None if name is None else resolve_reward(name, ctx.pipeline.data.kind,
                                                      ctx.field_path("search.reward"))
    reference = None
    if "reference" in ctx.inputs:
        model, _, _ = load_checkpoint(ctx.input_path("reference"), spec.weights)
        reference = CountingNet(model.to(ctx.device))
    return SearchRun(spec.search, reward, ctx.input_path("data"), reference)

"""CHORDS: multi-core hierarchical ODE solving, a slow accurate core correcting faster ones (training-free).

K cores run the same T-step Euler solve of the probability-flow ODE on the sampler grid, core k from
start step s_k (s_0 = 0 < s_1 < ...). Round 0 evaluates the velocity at the noise once; every later
core starts from the coarse Euler jump of that velocity to its start time. Each round every unfinished
core makes one fine step (one network evaluation, all cores at once on their own worker processes).
Each core k > 0 keeps an anchor, the state at one step j its trajectory rests on (first its own start).
When the core below reaches j with a better state there, core k's step into t' gets the Parareal-style
correction

    x_k(t') = F(x_k) + G(x_{k-1}(t_j) -> t') - G(anchor -> t'),

F a fine Euler step and G a coarse Euler jump with the velocity at the jump's start, and the anchor
advances with the lower core (corrections cost no evaluations: see `corrected_step`). Cores finish in
order of their start, the highest first; the stage returns finish number `hit` (hit K - 1 is core 0:
exactly sequential Euler). Latency in rounds: 1 + T - s_k against T for the sequential solve (core 0
makes its first step in round 0).

Workers are spawned processes, one torch thread each, handed the network and the batch's conditions once
when they start; then only states and velocities cross process boundaries. (Forking is not safe here: the
stage runs in a worker thread of a process whose other threads, Prefect's, the lease renewer's and torch's
own, may hold locks at the moment of the fork, and a forked child that needs one waits forever.)
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from typing import Any

import cloudpickle
import torch

from diffpipe.schemas.search import Chords

from ..registry import search
from ..rl.continuous.common import velocity
from .particles import ContinuousProblem, SearchResult

WORKER: dict[str, Any] = {}
"""In a worker process: the network and conditions it was started with."""


def worker_velocity(job: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """In a worker: the velocity of states x at internal time t (one network evaluation per row)."""
    x, t = job
    with torch.no_grad():
        return velocity(WORKER["net"], x, t.expand(x.shape[0]), WORKER["cond"])


def start_worker(payload: bytes) -> None:
    """Worker initializer: one torch thread per core, and the network and conditions every job uses.

    They come as one cloudpickle payload, since the network may be a closure over the model (plain pickle
    refuses those).
    """
    torch.set_num_threads(1)
    net, cond = cloudpickle.loads(payload)
    WORKER.update(net=net, cond=cond)


@dataclass
class Core:
    """One core's solve: step index and state, its velocity there, and its anchor.

    The anchor is the state at the anchor step that the core's trajectory currently rests on: first its
    own start state (with the velocity it computed there), then, after each correction, the lower
    core's state moved one step by the lower core's velocity.
    """

    index: int
    x: torch.Tensor
    v: torch.Tensor | None = None
    anchor_index: int = 0
    anchor_x: torch.Tensor | None = None
    anchor_v: torch.Tensor | None = None


def corrected_step(core: Core, lower: Core | None, grid: torch.Tensor) -> torch.Tensor:
    """The core's fine Euler step, plus the Parareal correction once the lower core is at the core's anchor.

    The correction G(x_lower -> t') - G(anchor -> t') jumps both states to t' with the velocity at the
    jump's start; an anchor without its own velocity (after the first correction) uses the lower core's,
    so the correction is the shift x_lower - anchor and costs no evaluation. The anchor then advances.
    """
    i, t_next = core.index, grid[core.index + 1]
    x_next = core.x + (t_next - grid[i]) * core.v
    if core.anchor_index == core.index:
        core.anchor_x, core.anchor_v = core.x, core.v  # the start state, with the velocity just computed there
    if lower is None or lower.index != core.anchor_index or core.anchor_x is None:
        return x_next
    j = lower.index
    anchor_v = lower.v if core.anchor_v is None else core.anchor_v
    x_next = x_next + (lower.x + (t_next - grid[j]) * lower.v) - (core.anchor_x + (t_next - grid[j]) * anchor_v)
    core.anchor_index, core.anchor_x, core.anchor_v = j + 1, lower.x + (grid[j + 1] - grid[j]) * lower.v, None
    return x_next


@search("chords")
def chords(spec: Chords, problem: ContinuousProblem) -> SearchResult:
    """Solve the batch's ODE on `cores` worker processes and return finish number `hit`."""
    grid, steps, n = problem.grid.to(problem.device), problem.steps, problem.n
    x0 = problem.noise(n)
    v0 = velocity(problem.net, x0, grid[0].expand(n), problem.cond)
    cores = [Core(s, x0 + (grid[s] - grid[0]) * v0, anchor_index=s) for s in spec.starts(steps)]
    cores[0] = Core(1, x0 + (grid[1] - grid[0]) * v0)  # core 0's first step is round 0's
    evaluations, rounds, hits = n, 1, []
    context = multiprocessing.get_context("spawn")
    payload = cloudpickle.dumps((problem.net, problem.cond))
    with context.Pool(spec.cores, initializer=start_worker, initargs=(payload,)) as pool:
        while len(hits) <= spec.hit:
            active = [k for k, c in enumerate(cores) if c.index < steps]
            need = [k for k in active if cores[k].v is None]
            for k, v in zip(need, pool.map(worker_velocity, [(cores[k].x, grid[cores[k].index]) for k in need],
                                           chunksize=1), strict=True):
                cores[k].v = v
            evaluations, rounds = evaluations + n * len(need), rounds + bool(need)
            lowers = {k: cores[k - 1] if k > 0 and cores[k - 1].index < steps else None for k in active}
            moved = {k: corrected_step(cores[k], lowers[k], grid) for k in active}
            for k in active:
                core = cores[k]
                core.x, core.v, core.index = moved[k], None, core.index + 1
                if core.index == steps:
                    hits.append(core.x)
    stats = {"rounds": rounds, "sequential_rounds": steps, "speedup_in_rounds": steps / rounds}
    return SearchResult(hits[spec.hit], None, evaluations, stats)

"""CHORDS on worker processes: the last finish is sequential Euler exactly; corrections beat the bare coarse start."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffpipe.schemas import FlowMatching
from diffpipe.schemas.search import Chords
from diffpipe.tasks.sampling import sample
from diffpipe.tasks.search.chords import chords
from diffpipe.tasks.search.particles import ContinuousProblem

MEAN, STD = 1.5, 0.3


def gaussian_velocity(x: torch.Tensor, timestep: torch.Tensor, labels) -> torch.Tensor:
    """Exact flow-matching velocity of N(MEAN, STD^2) data, at diffusers timesteps 1000 t."""
    t = (timestep.float() / 1000).reshape(-1, *([1] * (x.dim() - 1)))
    var = (1 - t) ** 2 * STD**2 + t**2
    x0 = MEAN + (1 - t) * STD**2 / var * (x - (1 - t) * MEAN)
    return (x - x0) / t.clamp(min=1e-6)


def problem(steps: int, seed: int = 0) -> ContinuousProblem:
    return ContinuousProblem(gaussian_velocity, (64, 2), None, steps, None, torch.Generator().manual_seed(seed),
                             torch.device("cpu"))


def sequential(steps: int, seed: int = 0) -> torch.Tensor:
    return sample(gaussian_velocity, FlowMatching(), FlowMatchEulerDiscreteScheduler(), steps, (64, 2), None,
                  torch.Generator().manual_seed(seed), torch.device("cpu"))


def test_the_last_finish_is_sequential_euler_and_earlier_finishes_save_rounds() -> None:
    steps = 12
    last = chords(Chords(cores=3, init_steps=[0, 3, 6], hit=2), problem(steps))
    torch.testing.assert_close(last.x, sequential(steps), rtol=1e-5, atol=1e-5)
    assert last.stats["rounds"] == steps
    first = chords(Chords(cores=3, init_steps=[0, 3, 6], hit=0), problem(steps))
    assert first.stats["rounds"] == 1 + steps - 6 and first.evaluations == 64 * (1 + 3 * (steps - 6))


@pytest.mark.parametrize("start", [4, 6])
def test_corrections_from_the_lower_core_beat_the_uncorrected_coarse_start(start: int) -> None:
    steps = 16
    exact = sequential(steps)
    p = problem(steps)
    corrected = chords(Chords(cores=2, init_steps=[0, start], hit=0), p).x
    q = problem(steps)  # the same noise: the fine solve from the bare coarse jump, no corrections
    x0 = q.noise(64)
    v0 = gaussian_velocity(x0, 1000 * q.grid[0].expand(64), None)
    bare = q.rollout(x0 + (q.grid[start] - q.grid[0]) * v0, start, None, 0.0)
    assert (corrected - exact).abs().mean() < 0.5 * (bare - exact).abs().mean()

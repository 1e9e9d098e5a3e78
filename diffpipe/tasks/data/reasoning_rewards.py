"""Reward plugins of the reasoning tasks: the exact verifier's score and dense Countdown closeness."""

from __future__ import annotations

from pathlib import Path

import torch

from diffpipe.storage.formats import open_dataset
from diffpipe.tasks.rl.rewards import reward

from .reasoning import closeness_completions, score_completions


@reward("exact_verifier", kinds=("countdown", "sudoku"))
def exact_verifier(samples: torch.Tensor, conditions: torch.Tensor, data_path: Path) -> torch.Tensor:
    """d1's reward from the exact verifier: Countdown 1 / 0.1 / 0, Sudoku the share of blanks filled right."""
    task = open_dataset(Path(data_path) / "train.zarr").attrs["task"]
    rewards, _ = score_completions(task, conditions.cpu().numpy(), samples.cpu().numpy())
    return torch.from_numpy(rewards).float()


@reward("countdown_closeness", kinds=("countdown",))
def countdown_closeness_reward(samples: torch.Tensor, conditions: torch.Tensor, data_path: Path) -> torch.Tensor:
    """Dense Countdown credit: 1 - |value - target| / target for answers over exactly the given numbers.

    Added to `exact_verifier` with a weight (e.g. 0.4), it ranks wrong answers by how near they land, so
    a rollout group where nothing is correct still has a gradient toward the target.
    """
    return torch.from_numpy(closeness_completions(conditions.cpu().numpy(), samples.cpu().numpy())).float()

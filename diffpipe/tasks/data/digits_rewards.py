"""Reward plugins for digits: the frozen classifier's log-probability and the deliberately hackable ink."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from diffpipe.tasks.rl.rewards import reward


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

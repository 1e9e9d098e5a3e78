"""A sweep: a grid of field values (and seeds) over one pipeline, run by `diffpipe sweep`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from .base import Strict


class SweepSpec(Strict):
    """Every combination of the grid's values, each repeated over seeds, run as its own pipeline at once."""

    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    """Dotted field path (as for `--set`, e.g. `stages.rl.algorithm.algorithm`) -> the values it takes."""
    repeat_seeds: int = Field(default=1, ge=1)
    """Seeds per cell: `runtime.seed`, +1, ... (the comparison gives mean ± std over them)."""
    metrics: list[str] = Field(default_factory=list)
    """Headline metrics to plot, as `stage.metric` paths; empty: every numeric metric of the evaluate stages."""

    @model_validator(mode="after")
    def _not_empty(self) -> SweepSpec:
        if not self.grid and self.repeat_seeds == 1:
            raise ValueError("empty grid: give at least one field path with values, or repeat_seeds > 1")
        if "runtime.seed" in self.grid and self.repeat_seeds > 1:
            raise ValueError("runtime.seed is both in the grid and repeated by repeat_seeds; use one of them")
        return self

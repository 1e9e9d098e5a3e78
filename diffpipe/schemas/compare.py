"""A pipeline's `compare:` block: one table of its stages on quality, reward and compute, built after a run.

Each row is one stage of a model's life (a pretrain, a mid-training, a distillation, an RL fine-tune, an
inference-time search) read from the evaluate stage that scored its samples: the quality and reward
metrics named here, the samples' NFE, FLOPs and wall time (the sample stage's costs that every evaluate
stage repeats), and the training stage's steps, FLOPs and wall time. Built by `diffpipe/flows/stage_table.py`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from .base import Strict

METRIC_PATH = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"
"""A dotted path into an evaluate stage's metrics, e.g. `model.frechet_distance`."""


class CompareRow(Strict):
    """One row: a stage of the life and the evaluation of the samples drawn after it."""

    label: str = Field(min_length=1)
    """Row name in the table (e.g. `meanflow 2-step`)."""
    evaluate: str
    """The evaluate stage whose metrics (and repeated sampling costs) fill the row."""
    train: str | None = None
    """The training stage whose steps, FLOPs and wall time the row carries (None: the row trains nothing)."""


class CompareSpec(Strict):
    """The stage table of a pipeline: rows, and the evaluate metrics that measure quality and reward."""

    rows: list[CompareRow] = Field(min_length=1)
    """Rows, in the order of the table."""
    quality: list[Annotated[str, Field(pattern=METRIC_PATH)]] = Field(min_length=1)
    """Metric paths of quality inside the evaluate metrics (e.g. `model.frechet_distance`)."""
    reward: str | None = Field(default=None, pattern=METRIC_PATH)
    """Metric path of the domain's reward inside the evaluate metrics (e.g. `model.classifier_logprob`)."""

    @model_validator(mode="after")
    def _check(self) -> CompareSpec:
        labels = [r.label for r in self.rows]
        if len(set(labels)) != len(labels):
            raise ValueError(f"compare.rows[].label: each label once; found {labels}")
        return self

    def stage_problem(self, kinds: dict[str, tuple[str, str]]) -> tuple[str, str, str, str] | None:
        """(field, problem, expected, found) for a row naming a missing or unfit stage, given name -> (stage
        kind, output kind) of the pipeline's stages; None when every row fits."""
        for i, row in enumerate(self.rows):
            found = kinds.get(row.evaluate)
            if found is None or found[0] != "evaluate":
                return (f"compare.rows[{i}].evaluate", "names no evaluate stage", "an evaluate stage",
                        repr(row.evaluate))
            if row.train is not None and kinds.get(row.train, ("", ""))[1] != "checkpoint":
                return (f"compare.rows[{i}].train", "names no training stage", "a stage producing a checkpoint",
                        repr(row.train))
        return None

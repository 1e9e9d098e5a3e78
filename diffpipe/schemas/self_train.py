"""The `self_train` stage: recursive training on a model's own samples, one cached node per generation.

Generation k samples a candidate pool from generation k-1's model (generation 0: the `model` stage),
selects part of it (`selection`), mixes it with a `real_fraction` of real training data and trains a
new model on the mix with the pretrain options. The pipeline expands the stage into nodes
`NAME.gen1 .. NAME.genN`; node k's key holds the options with `generations` set to k, so a run with
more generations reuses every generation of a shorter one. Later stages that refer to the stage read
its last generation.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .artifact import ArtifactKind
from .stages import PretrainStage, SchedulerSpec

GENERATION_SEPARATOR = ".gen"
"""Node names of a self_train stage: `NAME.gen1`, `NAME.gen2`, ..."""


class SelfTrainStage(PretrainStage):
    """Train generation after generation on the previous generation's samples plus some real data."""

    stage: Literal["self_train"] = "self_train"  # type: ignore[assignment]
    model: str | None = None
    """Checkpoint stage trained on real data: generation 0, whose samples train generation 1 (None: latest)."""
    init: str | None = None
    """Checkpoint stage whose weights start every generation's training (None: fresh seeded weights)."""
    generations: int = Field(default=5, ge=1)
    """Number of generations N (nodes `NAME.gen1 .. NAME.genN`)."""
    selection: Literal["none", "random", "entropy"] = "none"
    """How the synthetic share is chosen from the candidate pool: all of a pool of exactly that size (none),
    a uniform subset (random), or greedy farthest-point selection, which raises the Kozachenko-Leonenko
    entropy of the kept set (entropy)."""
    real_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of each generation's training set drawn afresh from the real training split."""
    data_size: int | None = Field(default=None, ge=2)
    """Training-set size of every generation (None: the size of the real training split)."""
    pool_factor: int = Field(default=2, ge=1)
    """Candidate pool = pool_factor x the synthetic share, for random and entropy selection (reference: 2)."""
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    """Sampler of the candidate pools and of the evaluation samples."""
    guidance_scale: float = Field(default=1.0, ge=0.0)
    """Classifier-free guidance scale of all sampling (1.0: none)."""
    eval_samples: int = Field(default=360, ge=2)
    """Samples of each generation's model scored for quality and memorisation."""
    entropy_neighbour: int = Field(default=1, ge=1)
    """k of the Kozachenko-Leonenko entropy estimate (reference code: 1)."""

    output_kind: ClassVar[ArtifactKind] = "checkpoint"
    references: ClassVar[dict[str, frozenset[str]]] = {"model": frozenset({"checkpoint"}),
                                                        "init": frozenset({"checkpoint"})}
    builds_model: ClassVar[bool] = True
    chained_reference: ClassVar[str | None] = "model"

    def expand(self) -> list[tuple[str, SelfTrainStage]]:
        """One node per generation, `NAME.genk`, each reading the one before as its `model`."""
        return [(f"{self.name}{GENERATION_SEPARATOR}{k}", self.generation(k)) for k in range(1, self.generations + 1)]

    def generation(self, k: int) -> SelfTrainStage:
        """The options of generation k's node (its key: `generations` set to k)."""
        return self.model_copy(update={"generations": k})

    @model_validator(mode="after")
    def _check_scheduler(self) -> SelfTrainStage:
        name, fitting = self.scheduler.name, self.objective.schedulers
        if name is not None and name not in fitting:
            raise ValueError(f"scheduler.name: does not fit the {self.objective.kind} objective; expected one of "
                             f"{', '.join(sorted(fitting))}; found {name!r}")
        return self

"""The whole pipeline spec and its cross-reference checks."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from .base import Strict
from .compare import CompareSpec
from .data import DataSpec
from .distill import ConsistencyDistill, DistillStage, MeanFlowTeacherDistill, MeanFlowTraining, MidtrainStage
from .models import ModelSpec, UNet2DSpec
from .rl import RLStage
from .runtime import RuntimeSpec
from .samplers import SAMPLER_CLASSES, NeuralSamplerStage
from .self_train import SelfTrainStage
from .stages import EvaluateStage, PretrainStage, SampleStage, StageBase
from .storage import StorageSpec
from .sweep import SweepSpec

# Adding a stage kind: write its class (a StageBase subclass with `stage: Literal[...]`) and add it here.
STAGE_CLASSES: tuple[type[StageBase], ...] = (PretrainStage, SampleStage, EvaluateStage, RLStage, MidtrainStage,
                                                MeanFlowTraining, MeanFlowTeacherDistill, ConsistencyDistill,
                                                SelfTrainStage, *SAMPLER_CLASSES)
StageSpec = Annotated[PretrainStage | SampleStage | EvaluateStage | RLStage | MidtrainStage | DistillStage
                      | SelfTrainStage | NeuralSamplerStage, Field(discriminator="stage")]

DEFAULTED_REFERENCES = {"model", "samples", "teacher"}
"""Reference fields that, left empty, point at the latest earlier stage of a fitting kind."""


class CrossReferenceError(ValueError):
    """A stage refers to a stage that is missing, later, or of the wrong kind."""

    def __init__(self, path: str, problem: str, expected: str, found: str):
        self.path, self.problem, self.expected, self.found = path, problem, expected, found
        super().__init__(f"{path}: {problem}; expected {expected}; found {found}")


class PipelineSpec(Strict):
    """A diffpipe pipeline: data, model, ordered stages, runtime and storage."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Pipeline name (used for Prefect run names and the store's name index)."""
    description: str = ""
    """Free text shown in the UI."""
    data: DataSpec
    """The data set."""
    model: ModelSpec = Field(default_factory=UNet2DSpec)
    """The network every training stage builds."""
    stages: list[StageSpec] = Field(min_length=1)
    """Stages, run in order."""
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    """Device, precision, seed, Dask."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Artifact root."""
    sweep: SweepSpec | None = None
    """A grid over this pipeline, run by `diffpipe sweep` (`diffpipe run` runs the pipeline as written)."""
    compare: CompareSpec | None = None
    """A table of this pipeline's stages (quality, reward, NFE, FLOPs, wall time), published after each run."""

    @model_validator(mode="after")
    def _check_cross_references(self) -> PipelineSpec:
        seen: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            if stage.name in seen:
                raise CrossReferenceError(
                    f"stages[{i}].name", "stage names must be unique", "a new name",
                    f"'{stage.name}', already used by stages[{seen[stage.name]}]",
                )
            for field, kinds in stage.references.items():
                self._resolve_reference(i, stage, field, kinds, seen)
            seen[stage.name] = i
        self._check_schedulers()
        self._check_data_fit()
        problem = self.compare and self.compare.stage_problem({s.name: (s.stage, s.output_kind) for s in self.stages})
        if problem:
            raise CrossReferenceError(*problem)
        return self

    def _check_data_fit(self) -> None:
        for i, stage in enumerate(self.stages):
            fit = getattr(stage, "fit_problem", None)
            problem = fit(self.data, self.model) if fit else None
            if problem:
                field, what, expected, found = problem
                raise CrossReferenceError(f"stages[{i}].{field}", what, expected, found)

    def _resolve_reference(
        self, i: int, stage: StageBase, field: str, kinds: frozenset[str], seen: dict[str, int]
    ) -> None:
        path, target = f"stages[{i}].{field}", getattr(stage, field)
        wanted = f"an earlier stage producing {' or '.join(sorted(kinds))}"
        if target is None:
            if field not in DEFAULTED_REFERENCES:
                return
            earlier = [s.name for s in self.stages[:i]
                       if s.output_kind in kinds and stage.reference_problem(field, s) is None]
            if not earlier:
                unfit = [s for s in self.stages[:i] if s.output_kind in kinds]
                if unfit:
                    raise CrossReferenceError(path, stage.reference_problem(field, unfit[-1]), wanted,
                                              f"only unfit stages before this one, the latest '{unfit[-1].name}'")
                raise CrossReferenceError(path, "no stage to refer to", wanted, "none before this stage")
            setattr(stage, field, earlier[-1])
            return
        names = [s.name for s in self.stages]
        if target not in names:
            raise CrossReferenceError(path, "refers to a missing stage", wanted, f"'{target}'")
        if target not in seen:
            found = f"'{target}' (stages[{names.index(target)}])"
            raise CrossReferenceError(path, "refers to a later stage", wanted, found)
        kind = self.stages[seen[target]].output_kind
        if kind not in kinds:
            found = f"'{target}' producing {kind}"
            raise CrossReferenceError(path, "refers to a stage of the wrong kind", wanted, found)
        problem = stage.reference_problem(field, self.stages[seen[target]])
        if problem:
            raise CrossReferenceError(path, problem, wanted, f"'{target}' ({self.stages[seen[target]].stage} stage)")

    def _check_schedulers(self) -> None:
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, SampleStage):
                continue
            source = self.stage(stage.model)
            objective = getattr(source, "objective", None)
            if getattr(objective, "two_time", False) and stage.guidance_scale != 1.0:
                raise CrossReferenceError(f"stages[{i}].guidance_scale", f"the {objective.kind} checkpoint of stage "
                                          f"'{source.name}' samples without guidance", "1.0", str(stage.guidance_scale))
            if objective is None or stage.scheduler.name is None:
                continue
            if not objective.schedulers:
                raise CrossReferenceError(
                    f"stages[{i}].scheduler.name", f"the {objective.kind} objective of stage '{source.name}' "
                    "samples in one deterministic call and takes no scheduler", "no scheduler name",
                    f"'{stage.scheduler.name}'",
                )
            if stage.scheduler.name not in objective.schedulers:
                raise CrossReferenceError(
                    f"stages[{i}].scheduler.name",
                    f"scheduler does not fit the {objective.kind} objective of stage '{source.name}'",
                    "one of " + ", ".join(sorted(objective.schedulers)),
                    f"'{stage.scheduler.name}'",
                )

    def stage_index(self, node: str) -> int:
        """Position in `stages` of the stage that runs node `node`: the stage of that name, or the stage that
        `node` is one expanded node of (`StageBase.expand`, e.g. self_train's generation `NAME.genk`)."""
        for i, s in enumerate(self.stages):
            if s.name == node or node in dict(s.expand()):
                return i
        raise KeyError(node)

    def stage(self, node: str) -> StageBase:
        """The options node `node` runs with: the stage of that name, or the options of one of its expanded nodes."""
        stage = self.stages[self.stage_index(node)]
        return dict(stage.expand()).get(node, stage)

    def field_path(self, node: str, field: str) -> str:
        """Spec path of a field of the stage that runs node `node`, e.g. `stages[1].search.reward` (error messages)."""
        return f"stages[{self.stage_index(node)}].{field}"

    def upstream(self, stage: StageBase) -> dict[str, str]:
        """Reference field -> name of the stage it points at, for every set reference."""
        return {f: getattr(stage, f) for f in stage.references if getattr(stage, f) is not None}

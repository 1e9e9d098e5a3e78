"""Pipeline stages: a union on `stage`. Each class declares what it produces and what it refers to."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from .artifact import ArtifactKind
from .base import Strict
from .objectives import FlowMatching, Objective
from .search import SearchMethod

StageName = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", description="Unique name of the stage.")


class StageBase(Strict):
    """Fields every stage has; subclasses add `stage: Literal[...]` and their options."""

    name: str = StageName
    """Unique name of the stage; other stages refer to it by this name."""

    output_kind: ClassVar[ArtifactKind]
    references: ClassVar[dict[str, frozenset[str]]] = {}
    """Fields naming an earlier stage, with the output kinds each accepts."""
    builds_model: ClassVar[bool] = False
    """Whether the stage builds a network from the pipeline's `model` spec (then it is part of its key)."""
    runs_network: ClassVar[bool] = False
    """Whether the stage builds, trains or samples a network (then the model arch's module is in its code version)."""

    def implementations(self) -> list[tuple[str, str]]:
        """(namespace, name) of each registered implementation the stage runs (see `diffpipe/tasks/registry.py`);
        their modules are part of the stage's code version."""
        return []

    chained_reference: ClassVar[str | None] = None
    """For a stage run as several nodes: the reference each node after the first reads from the node before."""

    def reference_problem(self, field: str, target: StageBase) -> str | None:
        """Why `target` cannot fill reference `field` although its output kind fits (None: it can)."""
        return None

    def expand(self) -> list[tuple[str, StageBase]]:
        """The cached nodes this stage runs as, (node name, options of that node); most stages are one."""
        return [(self.name, self)]


class SchedulerSpec(Strict):
    """A diffusers scheduler by class name, its step count and extra constructor options."""

    name: str | None = None
    """diffusers class name, e.g. `DPMSolverMultistepScheduler`; None: the objective's default."""
    steps: int = Field(default=50, ge=1)
    """Number of sampler steps."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments of the scheduler's constructor."""


class PretrainStage(StageBase):
    """Train a model from random weights (or from `init`) with one objective."""

    stage: Literal["pretrain"] = "pretrain"
    objective: Objective = Field(default_factory=FlowMatching)
    """Training objective."""
    init: str | None = None
    """Earlier checkpoint stage whose weights start training (None: random)."""
    steps: int = Field(default=2000, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(default=128, ge=1)
    """Samples per step."""
    lr: float = Field(default=1e-3, gt=0.0)
    """Peak AdamW learning rate."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    """AdamW weight decay."""
    warmup_steps: int = Field(default=100, ge=0)
    """Linear learning-rate warm-up."""
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    """Global gradient-norm clip (None: off)."""
    ema_decay: float | None = Field(default=0.999, gt=0.0, lt=1.0)
    """EMA decay of the published weights (None: publish the raw weights)."""
    checkpoint_every: int = Field(default=250, ge=1)
    """Steps between resumable training checkpoints."""
    log_every: int = Field(default=50, ge=1)
    """Steps between loss log lines."""
    cond_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Probability of dropping the class label (enables classifier-free guidance)."""

    output_kind: ClassVar[ArtifactKind] = "checkpoint"
    references: ClassVar[dict[str, frozenset[str]]] = {"init": frozenset({"checkpoint"})}
    builds_model: ClassVar[bool] = True
    runs_network: ClassVar[bool] = True

    def implementations(self) -> list[tuple[str, str]]:
        """The objective's loss."""
        return [("objective", self.objective.kind)]


class SampleStage(StageBase):
    """Draw samples from a trained checkpoint with any compatible diffusers scheduler."""

    stage: Literal["sample"] = "sample"
    model: str | None = None
    """Checkpoint stage to sample from (None: the latest earlier one)."""
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    """Sampler."""
    num_samples: int = Field(default=500, ge=1)
    """Number of samples (domains with per-example conditions, e.g. CEI: number of held-out conditions)."""
    samples_per_condition: int = Field(default=1, ge=1)
    """Samples drawn per condition (CEI: per held-out event, for calibration); image domains ignore it."""
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    """Classes to request, cycled over the samples (None: all classes equally); checked against the data."""
    guidance_scale: float = Field(default=1.0, ge=0.0)
    """Classifier-free guidance scale (1.0: none)."""
    weights: Literal["ema", "online"] = "ema"
    """Which weights of the checkpoint to use."""
    batch_size: int = Field(default=500, ge=1)
    """Samples per network call."""
    seed: int = 0
    """Offset added to the runtime seed for the initial noise."""
    search: SearchMethod | None = None
    """Inference-time search or guidance (a union on `method`; None: plain sampling)."""

    output_kind: ClassVar[ArtifactKind] = "samples"
    references: ClassVar[dict[str, frozenset[str]]] = {"model": frozenset({"checkpoint"}),
                                                       "reference": frozenset({"checkpoint"})}
    runs_network: ClassVar[bool] = True

    @property
    def reference(self) -> str | None:
        """The second checkpoint stage the search reads (RFG's reference model), else None."""
        return getattr(self.search, "reference", None)

    def fit_problem(self, data: Any, model: Any) -> tuple[str, str, str, str] | None:
        """(field, problem, expected, found) when the requested classes do not exist in the data, else None."""
        if self.classes is None:
            return None
        num_classes = getattr(data, "num_classes", None)
        if num_classes is None:
            return "classes", f"the {data.kind} data has no classes to request", "no classes (null)", str(self.classes)
        if max(self.classes) >= num_classes:
            return ("classes", f"the {data.kind} data has {num_classes} classes", f"classes in 0..{num_classes - 1}",
                    str(self.classes))
        return None

    def implementations(self) -> list[tuple[str, str]]:
        """The search method and its reward, when the stage searches."""
        if self.search is None:
            return []
        reward = getattr(self.search, "reward", None)
        return [("search", self.search.method), *([("reward", reward)] if reward else [])]


class EvaluateStage(StageBase):
    """Score samples against held-out data with generic and domain metrics."""

    stage: Literal["evaluate"] = "evaluate"
    samples: str | None = None
    """Sample stage to evaluate (None: the latest earlier one)."""
    metrics: list[Literal["mmd", "sliced_wasserstein", "domain"]] = Field(
        default_factory=lambda: ["mmd", "sliced_wasserstein", "domain"]
    )
    """Metrics to compute; `domain` is the data set's own (digits: classifier accuracy and Frechet distance)."""
    mmd_bandwidths: list[Annotated[float, Field(gt=0.0)]] | None = Field(default=None, min_length=1)
    """RBF bandwidths of the MMD kernel, summed (None: 0.5, 1, 2 times the median distance within the reference)."""
    sw_projections: int = Field(default=256, ge=1)
    """Random directions of the sliced Wasserstein distance."""
    max_reference: int | None = Field(default=None, ge=2)
    """Cap on held-out samples used as reference (None: all)."""
    seed: int = 0
    """Seed of the metric's random projections and subsets."""

    output_kind: ClassVar[ArtifactKind] = "metrics"
    references: ClassVar[dict[str, frozenset[str]]] = {"samples": frozenset({"samples"})}

"""Mid-training (`midtrain`, method `cmt`) and distillation (`distill`, a union on `method`) stages.

Both train a two-time network u(x_t, r, t) (the mean velocity over [r, t], internal time convention
x_t = (1 - t) x0 + t eps, t = 0 is data) and publish it as a checkpoint that the `sample` stage draws
from in one, two or k steps. Each method's implementation is one module under `diffpipe/tasks/flowmap/`
named after its `method` (cmt, meanflow, meanflow_distill, consistency), whose loss takes the stage spec
as its options. Defaults are those of the reference code named in each field (sony/cmt, sony/mf-rae,
py-meanflow, openai/consistency_models); the number of steps is ours (the references train 100k-800k
iterations on GPUs).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from .artifact import ArtifactKind
from .base import Strict
from .stages import PretrainStage, StageBase

CHECKPOINT: frozenset[str] = frozenset({"checkpoint"})


class FlowMapObjective(Strict):
    """What a flow-map checkpoint predicts: u(x_t, r, t), sampled by z_r = z_t - (t - r) u on any grid."""

    kind: Literal["flow_map"] = "flow_map"
    two_time: ClassVar[bool] = True
    default_scheduler: ClassVar[str] = "FlowMapEulerDiscreteScheduler"
    schedulers: ClassVar[frozenset[str]] = frozenset({"FlowMapEulerDiscreteScheduler"})


class ConsistencyObjective(Strict):
    """A two-time net trained only on jumps to data (r = 0): k steps jump to data and re-noise (CM multistep)."""

    kind: Literal["consistency"] = "consistency"
    two_time: ClassVar[bool] = True
    default_scheduler: ClassVar[str] = "FlowMapEulerDiscreteScheduler"
    schedulers: ClassVar[frozenset[str]] = frozenset({"FlowMapEulerDiscreteScheduler"})


TwoTimeObjective = Annotated[FlowMapObjective | ConsistencyObjective, Field(discriminator="kind")]
"""How a midtrain / distill checkpoint is sampled (recorded in its training.json)."""


TEACHER_OBJECTIVES: frozenset[str] = frozenset({"flow_matching", "edm", "ddpm"})
"""Pretraining objectives whose network converts to a velocity teacher (tasks/flowmap/teachers.py)."""


def velocity_teacher_problem(target: StageBase) -> str | None:
    """Why `target` cannot serve as a teacher (None: a flow-matching, EDM or DDPM pretrain stage)."""
    if isinstance(target, PretrainStage) and target.objective.kind in TEACHER_OBJECTIVES:
        return None
    return "a teacher must be a flow-matching, EDM or DDPM pretrain stage (its velocity is converted)"


def velocity_weights_problem(target: StageBase) -> str | None:
    """Why `target`'s weights cannot start a two-time student (None: they compute a velocity)."""
    if isinstance(target, PretrainStage) and target.objective.kind == "flow_matching":
        return None
    return ("a student starts from the weights of a flow-matching pretrain stage (a velocity model); "
            "an EDM or DDPM network predicts something else: use init random")


class TwoTimeTraining(StageBase):
    """Options of the shared training loop, as a midtrain or distill stage uses them."""

    steps: int = Field(default=2000, ge=1)
    """Optimizer steps (the references run 100k-800k; ours are sized for small data)."""
    batch_size: int = Field(default=128, ge=1)
    """Data samples per step (sony/cmt and CM CIFAR-10 use 128 per GPU)."""
    lr: float = Field(default=1e-4, gt=0.0)
    """Peak AdamW learning rate (mf-rae CMT and MeanFlow distillation: 1e-4)."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    """AdamW weight decay (mf-rae: 0)."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear learning-rate warm-up, in steps."""
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    """Global gradient-norm clip (mf-rae: 1.0; None: off)."""
    ema_decay: float | None = Field(default=0.999, gt=0.0, lt=1.0)
    """EMA decay of the published weights (CMT references: 0.999; None: publish the raw weights)."""
    checkpoint_every: int = Field(default=250, ge=1)
    """Steps between resumable training checkpoints."""
    log_every: int = Field(default=50, ge=1)
    """Steps between loss log lines."""
    cond_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Probability of replacing a condition by 'no condition' (mf-rae label dropout: 0.1)."""
    random_init_time_scale: float = Field(default=0.01, gt=0.0)
    """Time-embedding scale of a randomly initialised student: its network sees 1000 t times this (diffusers
    uses 1; 0.01 keeps MeanFlow's d/dt target bounded, see FlowMapNet). Teacher-initialised students keep 1."""

    output_kind: ClassVar[ArtifactKind] = "checkpoint"
    builds_model: ClassVar[bool] = True
    runs_network: ClassVar[bool] = True

    def implementations(self) -> list[tuple[str, str]]:
        """The method's loss."""
        return [("method", self.method)]

    def reference_problem(self, field: str, target: StageBase) -> str | None:
        """A teacher must be a velocity model; `init` must be one too, or a midtrain / distill checkpoint."""
        if field == "teacher":
            return velocity_teacher_problem(target)
        if field == "init" and not isinstance(target, TwoTimeTraining) and velocity_weights_problem(target):
            return "init must be a flow-matching pretrain stage or a midtrain / distill stage"
        return None


class MidtrainStage(TwoTimeTraining):
    """Consistency Mid-Training (CMT): regress the frozen teacher's ODE-solver trajectories from fresh noise."""

    stage: Literal["midtrain"] = "midtrain"
    method: Literal["cmt"] = "cmt"
    """Mid-training method (CMT, arXiv 2509.24526)."""
    teacher: str | None = None
    """Pretrain stage (flow matching, or EDM / DDPM converted to a velocity) whose ODE is solved (None: the latest)."""
    init: Literal["teacher", "random"] = "teacher"
    """Student start: the teacher's weights with a zero gap embedding (sony/cmt, mf-rae) or random."""
    form: Literal["flow_map", "consistency"] = "flow_map"
    """flow_map: mean velocity between two trajectory states (mf-rae); consistency: each state to the endpoint
    (sony/cmt)."""
    solver: str = "FlowMatchEulerDiscreteScheduler"
    """Trajectory solver: a diffusers flow scheduler of order 1 (mf-rae: Euler), or `rk4` on a uniform grid."""
    solver_steps: int = Field(default=16, ge=1)
    """Teacher calls per trajectory (both references: 16)."""
    solver_options: dict[str, Any] = Field(default_factory=dict)
    """Constructor options of the solver (rk4: `substeps` per interval)."""
    trajectories: int | None = Field(default=None, ge=1)
    """Trajectories solved per step (None: batch_size // solver_steps, as sony/cmt's 128 // 16)."""
    pairs: int | None = Field(default=None, ge=1)
    """flow_map form: (state, state) pairs regressed per step (None: batch_size)."""

    references: ClassVar[dict[str, frozenset[str]]] = {"teacher": CHECKPOINT}

    def reference_problem(self, field: str, target: StageBase) -> str | None:
        """As every two-time stage; `init: teacher` also needs the teacher's weights to compute a velocity."""
        problem = super().reference_problem(field, target)
        if problem is None and field == "teacher" and self.init == "teacher":
            return velocity_weights_problem(target)
        return problem

    @property
    def objective(self) -> FlowMapObjective | ConsistencyObjective:
        """How the published checkpoint is sampled."""
        return FlowMapObjective() if self.form == "flow_map" else ConsistencyObjective()


class DistillBase(TwoTimeTraining):
    """Fields of every distill method."""

    stage: Literal["distill"] = "distill"
    init: str | None = None
    """Student start: None or `random` (the pipeline's model, random weights), a flow-matching pretrain stage
    (its weights, zero gap embedding) or a midtrain / distill stage (its two-time weights); EMA weights are used."""

    @field_validator("init", mode="before")
    @classmethod
    def _random_is_none(cls, value: Any) -> Any:
        return None if value == "random" else value

    @property
    def objective(self) -> FlowMapObjective | ConsistencyObjective:
        """How the published checkpoint is sampled."""
        return FlowMapObjective()


class MeanFlowOptions(DistillBase):
    """MeanFlow loss options (py-meanflow's improved CIFAR recipe, `v1` time sampler)."""

    time_sampler: Literal["v0", "v1"] = "v1"
    """v0 (paper): sort two draws; v1 (py-meanflow default): r = min(t, r)."""
    t_mean: float = -0.6
    """Mean of the logit-normal draw of t."""
    t_std: float = Field(default=1.6, gt=0.0)
    """Std of the logit-normal draw of t."""
    r_mean: float = -4.0
    """Mean of the logit-normal draw of r."""
    r_std: float = Field(default=1.6, gt=0.0)
    """Std of the logit-normal draw of r."""
    ratio: float = Field(default=0.75, ge=0.0, le=1.0)
    """Share of samples with r != t (the rest is plain flow matching)."""
    norm_p: float = Field(default=0.75, ge=0.0)
    """Adaptive weight power p of E / sg(E + norm_eps)^p (0: unweighted)."""
    norm_eps: float = Field(default=1e-3, gt=0.0)
    """Adaptive weight epsilon."""
    derivative: Literal["jvp", "finite_difference"] = "jvp"
    """d/dt u by forward-mode AD (torch.func.jvp) or by central finite differences; the latter averages over
    fd_delta and so ignores the high-frequency time features a student initialised from a diffusers UNet
    (time input 1000 t) inherits, whose exact derivative swamps the target."""
    fd_delta: float = Field(default=5e-3, gt=0.0)
    """Finite-difference step in internal time (mf-rae: 5e-3)."""


class MeanFlowTraining(MeanFlowOptions):
    """MeanFlow training on data: the one-point velocity eps - x0 in the derivative and the target (no teacher)."""

    method: Literal["meanflow"] = "meanflow"
    """Distill-stage method (MeanFlow trains on data alone; it sits in `distill` as a few-step student)."""
    lr: float = Field(default=6e-4, gt=0.0)
    """Peak AdamW learning rate (py-meanflow CIFAR: 6e-4)."""
    ema_decay: float | None = Field(default=0.9999, gt=0.0, lt=1.0)
    """EMA decay of the published weights (py-meanflow: 0.9999; None: publish the raw weights)."""

    references: ClassVar[dict[str, frozenset[str]]] = {"init": CHECKPOINT}


class MeanFlowTeacherDistill(MeanFlowOptions):
    """MeanFlow distillation (mf-rae MFD): the frozen teacher's velocity replaces eps - x0 everywhere."""

    method: Literal["meanflow_distill"] = "meanflow_distill"
    """Distillation method."""
    teacher: str | None = None
    """Pretrain stage giving the velocity (flow matching, or EDM / DDPM converted; None: the latest earlier one)."""
    ratio: float = Field(default=0.25, ge=0.0, le=1.0)
    """Share of samples with r != t (mf-rae: 0.25)."""
    norm_p: float = Field(default=1.0, ge=0.0)
    """Adaptive weight power p of E / sg(E + norm_eps)^p (mf-rae: 1)."""
    derivative: Literal["jvp", "finite_difference"] = "finite_difference"
    """d/dt u by forward-mode AD or by central finite differences (mf-rae: finite differences)."""
    ema_decay: float | None = Field(default=0.9999, gt=0.0, lt=1.0)
    """EMA decay of the published weights (mf-rae: 0.9999; None: publish the raw weights)."""

    references: ClassVar[dict[str, frozenset[str]]] = {"teacher": CHECKPOINT, "init": CHECKPOINT}


class ConsistencyDistill(DistillBase):
    """Consistency distillation (CD): f(x_{t_n+1}) against an EMA target at one teacher solver step below."""

    method: Literal["consistency"] = "consistency"
    """Distillation method."""
    teacher: str | None = None
    """Pretrain stage whose ODE is stepped (flow matching, or EDM / DDPM converted; None: the latest earlier one)."""
    levels: int = Field(default=18, ge=2)
    """Karras discretisation levels (CM CIFAR-10 CD: 18)."""
    sigma_min: float = Field(default=0.002, gt=0.0)
    """Smallest EDM noise level of the grid (internal t = sigma / (1 + sigma))."""
    sigma_max: float = Field(default=80.0, gt=0.0)
    """Largest EDM noise level of the grid."""
    rho: float = Field(default=7.0, gt=0.0)
    """Karras grid exponent."""
    solver: Literal["euler", "heun"] = "heun"
    """One teacher ODE step between adjacent levels (CM: Heun)."""
    target_ema: float = Field(default=0.95, ge=0.0, lt=1.0)
    """EMA decay of the target network (CM: 0.95; 0: the online net under stop-grad, iCT / ECT)."""
    distance: Literal["l2", "pseudo_huber"] = "l2"
    """Distance between student and target (iCT: pseudo-Huber with c = 0.00054 sqrt(dim))."""
    weighting: Literal["uniform", "inverse_gap"] = "uniform"
    """Per-level weight (iCT: 1 / (t_n+1 - t_n))."""

    references: ClassVar[dict[str, frozenset[str]]] = {"teacher": CHECKPOINT, "init": CHECKPOINT}

    @property
    def objective(self) -> FlowMapObjective | ConsistencyObjective:
        """How the published checkpoint is sampled (trained on r = 0 jumps only)."""
        return ConsistencyObjective()


DistillStage = Annotated[MeanFlowTraining | MeanFlowTeacherDistill | ConsistencyDistill,
                         Field(discriminator="method")]
"""A distill stage: a union on `method`."""

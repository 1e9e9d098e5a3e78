"""Checks that need libraries (so they live outside schemas/): scheduler names and options."""

from __future__ import annotations

import inspect
import math
import os

import diffusers

from diffpipe.errors import SpecError
from diffpipe.schemas import PipelineSpec, SampleStage
from diffpipe.schemas.climate import ClimateBuilderSource, SPFSpec, check_pyramid
from diffpipe.schemas.distill import MidtrainStage
from diffpipe.schemas.search import CONTINUOUS, Chords, RewardFreeGuidance
from diffpipe.schemas.self_train import SelfTrainStage
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.flowmap.trajectories import EXACT_SOLVER, make_flow_solver
from diffpipe.tasks.registry import get_domain
from diffpipe.tasks.rl.rewards import resolve_reward
from diffpipe.tasks.self_train import supports_self_train


def check_spec(spec: PipelineSpec) -> None:
    """Raise SpecError for what schema validation cannot see; also check the artifact root opens."""
    for i, stage in enumerate(spec.stages):
        if isinstance(stage, SampleStage | SelfTrainStage):
            _check_scheduler(i, stage)
        if isinstance(stage, SampleStage) and stage.search is not None:
            _check_search(spec, i, stage)
        if isinstance(stage, SelfTrainStage) and not supports_self_train(get_domain(spec.data.kind)):
            raise SpecError(f"stages[{i}].selection", f"self_train selects and measures by the entropy of sample "
                            f"sets, which {spec.data.kind} data cannot estimate", "data with entropy features "
                            "(digits, countdown, sudoku, rna_design)", spec.data.kind)
        for j, term in enumerate(getattr(stage, "rewards", None) or []):
            resolve_reward(term.name, spec.data.kind, f"stages[{i}].rewards[{j}].name")
        if isinstance(stage, MidtrainStage):
            _check_trajectory_solver(i, stage)
    if isinstance(spec.model, SPFSpec):
        source = getattr(spec.data, "source", None)
        builder = isinstance(source, ClimateBuilderSource)
        check_pyramid(spec.model.levels, (source.nlat, source.nlon) if builder else None,
                      source.months_per_year if builder else None)
    domain_check = getattr(get_domain(spec.data.kind), "check_spec", None)
    if domain_check is not None:  # the model and stages against the data they will see
        domain_check(spec)
    ArtifactStore(spec.storage.root)


def _check_scheduler(i: int, stage: SampleStage | SelfTrainStage) -> None:
    name = stage.scheduler.name
    if name is None:
        return
    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
        raise SpecError(f"stages[{i}].scheduler.name", "not a diffusers scheduler", "a class such as DDIMScheduler",
                        repr(name))
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for option in stage.scheduler.options:
        if option not in accepted:
            raise SpecError(f"stages[{i}].scheduler.options.{option}", f"{name} has no such option",
                            "one of " + ", ".join(sorted(accepted)), repr(option))


def _check_trajectory_solver(i: int, stage: MidtrainStage) -> None:
    if stage.solver == EXACT_SOLVER:
        return
    try:
        make_flow_solver(stage.solver, stage.solver_options)
    except SpecError as e:
        raise SpecError(f"stages[{i}].solver", e.problem, e.expected, e.found) from None


SEARCH_SCHEDULERS = {None, "FlowMatchEulerDiscreteScheduler"}
"""Continuous searches step their own SDE on the FlowMatchEuler grid; no other scheduler is used."""
ACTIVATIONS_PER_VALUE = 64
"""Rough float32 activations per input value a network call holds (the memory estimate's network share)."""


def _check_search(spec: PipelineSpec, i: int, stage: SampleStage) -> None:
    """The method fits the data and the checkpoint, its reward and reference exist, its states fit in memory."""
    method, kind, where = stage.search, spec.data.kind, f"stages[{i}].search"
    if kind not in method.data_kinds:
        family = "flow-matching models of continuous data" if method.data_kinds == CONTINUOUS else \
            "masked-diffusion token models"
        raise SpecError(f"{where}.method", f"{method.method} applies to {family}",
                        "a method for " + kind + " data", repr(method.method))
    if getattr(method, "reward", None) is not None:
        resolve_reward(method.reward, kind, f"{where}.reward")
    if isinstance(method, RewardFreeGuidance) and method.reference == stage.model:
        raise SpecError(f"{where}.reference", "RFG guides the policy (`model`) away from a different reference",
                        "the checkpoint stage the policy was fine-tuned from", repr(method.reference))
    if isinstance(method, Chords) and method.starts(stage.scheduler.steps)[-1] >= stage.scheduler.steps:
        raise SpecError(f"{where}.init_steps", "every core must start before the last step",
                        f"start steps below scheduler.steps ({stage.scheduler.steps})",
                        str(method.starts(stage.scheduler.steps)))
    if isinstance(spec.model, SPFSpec):
        raise SpecError(f"{where}.method", "a Spatiotemporal Pyramid Flow solves each level as one batch of blocks "
                        "conditioned on the coarser level's draw; a search draws and scores the samples of a "
                        "single-level model", "no search on an spf model (search the single-level emulator, "
                        "pipelines/climate.yaml)", repr(method.method))
    if kind in CONTINUOUS:
        _check_continuous_source(spec, i, stage)
    _check_memory(spec, i, stage)


def _check_continuous_source(spec: PipelineSpec, i: int, stage: SampleStage) -> None:
    objective = getattr(spec.stage(stage.model), "objective", None)
    kinds = ("flow_matching",) if isinstance(stage.search, Chords) else ("flow_matching", "flow_map")
    if objective is None or objective.kind not in kinds:
        found = "no objective" if objective is None else f"a {objective.kind} checkpoint"
        raise SpecError(f"stages[{i}].search.method", "continuous search steps the flow-matching SDE (a flow map "
                        "with its mean velocity over each step; CHORDS needs a velocity)",
                        " or ".join(kinds) + " checkpoint", f"{found} from stage '{stage.model}'")
    schedulers = SEARCH_SCHEDULERS if objective.kind == "flow_matching" else {None, objective.default_scheduler}
    if stage.scheduler.name not in schedulers:
        raise SpecError(f"stages[{i}].scheduler.name", "a search samples on the uniform grid of "
                        "`scheduler.steps` with its own SDE", " or ".join(str(s) for s in sorted(schedulers, key=str)),
                        repr(stage.scheduler.name))


def sample_values(data) -> int:
    """Values in one sample of the data kind (an upper bound where it varies)."""
    if data.kind == "digits":
        return math.prod(data.sample_shape)
    if data.kind == "coulomb_explosion":
        return 3 * data.max_atoms
    if data.kind == "climate":
        source = getattr(data, "source", None)
        return 4 * getattr(source, "nlat", 96) * getattr(source, "nlon", 144)
    return 4096  # token models: sequence length x vocabulary logits, bounded generously


def _check_memory(spec: PipelineSpec, i: int, stage: SampleStage) -> None:
    method = stage.search
    copies = method.state_copies(stage.scheduler.steps)
    rows = min(stage.batch_size, stage.num_samples)
    values = sample_values(spec.data)
    per_call = rows * getattr(method, "particles", 1) * values * ACTIVATIONS_PER_VALUE
    need = 4 * (rows * copies * values + per_call)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    if need > available:
        sizes = [f for f in ("particles", "rollouts", "cores") if f in type(method).model_fields]
        field = sizes[0] if sizes else "method"
        raise SpecError(f"stages[{i}].search.{field}", "the search's states and network batches do not fit in "
                        f"memory at batch_size {stage.batch_size}",
                        f"at most {available / 2**30:.1f} GiB (half of this machine's memory)",
                        f"an estimated {need / 2**30:.1f} GiB")

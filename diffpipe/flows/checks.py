"""Checks that need libraries (so they live outside schemas/): scheduler names and options."""

from __future__ import annotations

import inspect

import diffusers

from diffpipe.errors import SpecError
from diffpipe.schemas import PipelineSpec, SampleStage
from diffpipe.schemas.distill import MidtrainStage
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.flowmap.cmt import EXACT_SOLVER, make_flow_solver
from diffpipe.tasks.rl.rewards import resolve_reward


def check_spec(spec: PipelineSpec) -> None:
    """Raise SpecError for what schema validation cannot see; also check the artifact root opens."""
    for i, stage in enumerate(spec.stages):
        if isinstance(stage, SampleStage):
            _check_scheduler(i, stage)
        for j, term in enumerate(getattr(stage, "rewards", None) or []):
            resolve_reward(term.name, spec.data.kind, f"stages[{i}].rewards[{j}].name")
        if isinstance(stage, MidtrainStage):
            _check_trajectory_solver(i, stage)
    ArtifactStore(spec.storage.root)


def _check_scheduler(i: int, stage: SampleStage) -> None:
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

"""Midtrain stage (method `cmt`): Consistency Mid-Training of a two-time student on the teacher's ODE trajectories."""

from __future__ import annotations

from diffpipe.schemas.distill import MidtrainStage

from .context import StageContext, StageOutput
from .flowmap.cmt import ConsistencyMidTrainingLoss
from .flowmap_stage import initial_student, load_teacher, loss_options, publish_student, train_student
from .registry import stage


@stage("midtrain")
def run_midtrain(ctx: StageContext) -> StageOutput:
    """Train the student with the CMT loss against the frozen teacher; publish a FlowMapNet checkpoint."""
    spec: MidtrainStage = ctx.pipeline.stage(ctx.node)
    teacher, velocity = load_teacher(ctx)
    student = initial_student(ctx, spec, teacher if spec.init == "teacher" else None)
    loss_fn = ConsistencyMidTrainingLoss(velocity, **loss_options(ConsistencyMidTrainingLoss, spec))
    result, ema = train_student(ctx, spec, student, loss_fn)
    info = {"method": spec.method, "form": spec.form, "solver": spec.solver, "solver_steps": spec.solver_steps}
    return publish_student(ctx, spec, student, ema, result, info)

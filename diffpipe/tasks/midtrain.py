"""Midtrain stage: train a two-time student with its method's loss against the frozen teacher (method `cmt`)."""

from __future__ import annotations

from diffpipe.schemas.distill import MidtrainStage

from .context import StageContext, StageOutput
from .flowmap.training import initial_student, load_teacher, method_loss, publish_student, train_student
from .registry import stage


@stage("midtrain")
def run_midtrain(ctx: StageContext) -> StageOutput:
    """Train the student (from the teacher's weights or random); publish a FlowMapNet checkpoint."""
    spec: MidtrainStage = ctx.pipeline.stage(ctx.node)
    teacher, velocity = load_teacher(ctx)
    student = initial_student(ctx, spec, teacher if spec.init == "teacher" else None)
    student, result, ema = train_student(ctx, spec, student, method_loss(ctx, spec, velocity))
    info = {"method": spec.method, "form": spec.form, "solver": spec.solver, "solver_steps": spec.solver_steps}
    return publish_student(ctx, spec, student, ema, result, info)

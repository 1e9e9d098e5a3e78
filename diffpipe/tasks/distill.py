"""Distill stage: train a two-time student with its method's loss (meanflow, meanflow_distill, consistency)."""

from __future__ import annotations

from .context import StageContext, StageOutput
from .flowmap.training import initial_student, method_loss, publish_student, train_student
from .registry import stage


@stage("distill")
def run_distill(ctx: StageContext) -> StageOutput:
    """Train the student from `init` (or random) with the method's loss; publish a FlowMapNet checkpoint."""
    spec = ctx.pipeline.stage(ctx.node)
    student = initial_student(ctx, spec, "init" if spec.init is not None else None)
    student, result, ema = train_student(ctx, spec, student, method_loss(ctx, spec))
    info = {"method": spec.method, "init": spec.init or "random"}
    return publish_student(ctx, spec, student, ema, result, info)

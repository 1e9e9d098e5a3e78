"""Evaluate stage: the domain scores samples against held-out data, with data floors beside the scores."""

from __future__ import annotations

from diffpipe.schemas import EvaluateStage
from diffpipe.storage.formats import write_json

from .context import StageContext, StageOutput
from .registry import get_domain, stage


@stage("evaluate")
def run_evaluate(ctx: StageContext) -> StageOutput:
    """Score the referenced samples; metrics go to `metrics.json`."""
    spec: EvaluateStage = ctx.pipeline.stage(ctx.node)
    output = get_domain(ctx.pipeline.data.kind).evaluate(ctx, spec)
    write_json(ctx.workdir / "metrics.json", output.metrics)
    return output

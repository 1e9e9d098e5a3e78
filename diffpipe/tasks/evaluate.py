"""Evaluate stage: the domain scores samples against held-out data, with data floors beside the scores.

Beside the scores go the evaluation's own compute (torch FLOPs counted over the whole evaluation, wall
time, energy where readable) and the sampling costs of the samples it scores, copied from their stage.
"""

from __future__ import annotations

from typing import Any

from torch.utils.flop_counter import FlopCounterMode

from diffpipe.schemas import EvaluateStage
from diffpipe.storage.formats import read_json, write_json

from .compute import EnergyMeter
from .context import StageContext, StageOutput
from .registry import get_domain, stage

SAMPLING_COSTS = ("nfe_per_sample", "network_evaluations_per_sample", "flops_per_evaluation", "sampling_flops",
                  "sampling_wall_s", "stage_wall_s", "cpu_energy_j", "gpu_energy_j", "search")
"""Metrics of the sample stage repeated in its evaluation, so one table compares quality with cost."""


@stage("evaluate")
def run_evaluate(ctx: StageContext) -> StageOutput:
    """Score the referenced samples; metrics go to `metrics.json`."""
    spec: EvaluateStage = ctx.pipeline.stage(ctx.node)
    meter = EnergyMeter(ctx.device).start()
    with FlopCounterMode(display=False) as counter:
        output = get_domain(ctx.pipeline.data.kind).evaluate(ctx, spec)
    output.metrics.update({**meter.stop(), "evaluation_flops": counter.get_total_flops(),
                           "sampling_costs": sampling_costs(ctx)})
    write_json(ctx.workdir / "metrics.json", output.metrics)
    return output


def sampling_costs(ctx: StageContext) -> dict[str, Any]:
    """The compute metrics the sample stage recorded for the samples being scored."""
    path = ctx.input_path("samples") / "metrics.json"
    recorded = read_json(path) if path.exists() else {}
    return {k: recorded[k] for k in SAMPLING_COSTS if k in recorded}

"""Sample stage: draw samples from a checkpoint with any compatible diffusers scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import ModelMixin
from pydantic import TypeAdapter

from diffpipe.schemas import Objective, SampleStage
from diffpipe.schemas.distill import TwoTimeObjective
from diffpipe.storage.formats import MODEL_DIR, ONLINE_MODEL_DIR, TRAINING_FILE, read_json, write_json

from .compute import EnergyMeter
from .context import StageContext, StageOutput
from .nets import load_model
from .registry import get_domain, stage
from .schedulers import make_scheduler


def load_checkpoint(
    path: Path, weights: str = "ema"
) -> tuple[ModelMixin, Objective | TwoTimeObjective, dict[str, Any]]:
    """Model (EMA or online weights), objective and training info of a checkpoint artifact folder."""
    online = path / ONLINE_MODEL_DIR
    folder = online if weights == "online" and online.exists() else path / MODEL_DIR
    info = read_json(path / TRAINING_FILE)
    objective = TypeAdapter(Objective | TwoTimeObjective).validate_python(info["objective"])
    return load_model(folder).eval(), objective, info


@stage("sample")
def run_sample(ctx: StageContext) -> StageOutput:
    """Generate samples with the domain's sampler; metrics go to `metrics.json`."""
    spec: SampleStage = ctx.pipeline.stage(ctx.node)
    model, objective, info = load_checkpoint(ctx.input_path("model"), spec.weights)
    scheduler = make_scheduler(objective, spec.scheduler.name, spec.scheduler.options)
    meter = EnergyMeter(ctx.device).start()
    output = get_domain(ctx.pipeline.data.kind).sample(ctx, spec, model.to(ctx.device), objective, scheduler, info)
    output.metrics.update(meter.stop())
    write_json(ctx.workdir / "metrics.json", output.metrics)
    return output

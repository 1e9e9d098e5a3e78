"""Sample stage: draw samples from a checkpoint with any compatible diffusers scheduler."""

from __future__ import annotations

import time

import numpy as np
import torch
import xarray as xr

from diffpipe.schemas import Objective, SampleStage
from diffpipe.storage.formats import MODEL_DIR, ONLINE_MODEL_DIR, TRAINING_FILE, load_model, read_json, write_dataset, write_json
from pydantic import TypeAdapter

from .context import StageContext, StageOutput
from .nets import call_image_model, null_label
from .objectives import make_scheduler
from .registry import DOMAINS, stage
from .sampling import CountingNet, guided, sample

SAMPLES_FILE = "samples.zarr"


def requested_labels(spec: SampleStage, num_classes: int | None) -> torch.Tensor | None:
    """Class label of every sample: `classes` cycled, or all classes in turn."""
    if num_classes is None:
        return None
    classes = spec.classes if spec.classes is not None else list(range(num_classes))
    return torch.tensor(classes, dtype=torch.long).repeat(spec.num_samples // len(classes) + 1)[: spec.num_samples]


def load_checkpoint(path, weights: str):
    """Model (EMA or online weights) and objective of a checkpoint artifact folder."""
    folder = path / (ONLINE_MODEL_DIR if weights == "online" and (path / ONLINE_MODEL_DIR).exists() else MODEL_DIR)
    info = read_json(path / TRAINING_FILE)
    objective = TypeAdapter(Objective).validate_python(info["objective"])
    return load_model(folder).eval(), objective, info


@stage("sample")
def run_sample(ctx: StageContext) -> StageOutput:
    """Generate `num_samples` samples; publish them as zarr with a PNG grid."""
    spec: SampleStage = ctx.pipeline.stage(ctx.node)
    model, objective, info = load_checkpoint(ctx.input_path("model"), spec.weights)
    device = ctx.device
    model.to(device)
    if spec.classes is not None and info.get("num_classes") and max(spec.classes) >= info["num_classes"]:
        raise ValueError(f"stages.{ctx.node}.classes: class {max(spec.classes)} is beyond the model's {info['num_classes']} classes")
    labels = requested_labels(spec, info.get("num_classes"))
    scheduler = make_scheduler(objective, spec.scheduler.name, spec.scheduler.options)
    shape = ctx.pipeline.data.sample_shape
    net = CountingNet(guided(lambda x, t, lab: call_image_model(model, x, t, lab), null_label(model), spec.guidance_scale))
    gen, chunks, t0 = ctx.generator(offset=1000 + spec.seed), [], time.perf_counter()
    for start in range(0, spec.num_samples, spec.batch_size):
        n = min(spec.batch_size, spec.num_samples - start)
        lab = None if labels is None else labels[start:start + n].to(device)
        with ctx.autocast():
            chunks.append(sample(net, objective, scheduler, spec.scheduler.steps, (n, *shape), lab, gen, device).cpu())
    wall = time.perf_counter() - t0
    x = torch.cat(chunks).float()
    _write_samples(x, labels, ctx)
    nfe = net.calls // max(1, len(chunks))
    metrics = {"num_samples": spec.num_samples, "scheduler": type(scheduler).__name__, "steps": spec.scheduler.steps,
               "nfe_per_sample": nfe, "sampling_wall_s": wall, "samples_per_s": spec.num_samples / wall}
    write_json(ctx.workdir / "metrics.json", metrics)
    grid = DOMAINS[ctx.pipeline.data.kind].preview(x, labels, ctx.workdir / "grid.png",
                                                   f"{ctx.node}: {type(scheduler).__name__}, {nfe} NFE")
    summary = f"{spec.num_samples} samples with `{type(scheduler).__name__}` in {spec.scheduler.steps} steps ({nfe} NFE)."
    return StageOutput("samples", metrics, summary, {"samples": grid})


def _write_samples(x: torch.Tensor, labels: torch.Tensor | None, ctx: StageContext) -> None:
    dims = ("sample", *[f"d{i}" for i in range(x.dim() - 1)])
    ds = xr.Dataset({"x": (dims, x.numpy())}, attrs={"stage": ctx.node})
    if labels is not None:
        ds["label"] = ("sample", labels.numpy().astype(np.int64))
    write_dataset(ds, ctx.workdir / SAMPLES_FILE)

"""Evaluate stage: generic distances (MMD, sliced Wasserstein) and the domain's metrics, with data floors."""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.schemas import EvaluateStage
from diffpipe.storage.formats import open_dataset, write_json

from .context import StageContext, StageOutput
from .metrics.generic import median_bandwidth, mmd2_unbiased, sliced_wasserstein
from .registry import DOMAINS, stage
from .sample import SAMPLES_FILE


def score(spec: EvaluateStage, domain, data_path, x, labels, reference, gen_seed: int) -> dict[str, Any]:
    """All requested metrics of sample set `x` against `reference`."""
    out: dict[str, Any] = {}
    if "mmd" in spec.metrics:
        h = spec.mmd_bandwidths or [f * median_bandwidth(x, reference) for f in (0.5, 1.0, 2.0)]
        out["mmd2"] = mmd2_unbiased(x, reference, h)
    if "sliced_wasserstein" in spec.metrics:
        out["sliced_wasserstein"] = sliced_wasserstein(x, reference, spec.sw_projections, torch.Generator().manual_seed(gen_seed))
    if "domain" in spec.metrics:
        out.update(domain.metrics(data_path, x, labels, reference))
    return out


@stage("evaluate")
def run_evaluate(ctx: StageContext) -> StageOutput:
    """Score the samples against held-out data; the floor scores training data of the same size."""
    spec: EvaluateStage = ctx.pipeline.stage(ctx.node)
    domain = DOMAINS[ctx.pipeline.data.kind]
    data_path = ctx.input_path("data")
    ds = open_dataset(ctx.input_path("samples") / SAMPLES_FILE).load()
    x = torch.from_numpy(ds["x"].values).float()
    labels = torch.from_numpy(ds["label"].values) if "label" in ds else None
    reference, _ = domain.load(data_path, "test")
    gen = torch.Generator().manual_seed(spec.seed)
    if spec.max_reference and len(reference) > spec.max_reference:
        reference = reference[torch.randperm(len(reference), generator=gen)[: spec.max_reference]]
    train_x, train_y = domain.load(data_path, "train")
    pick = torch.randperm(len(train_x), generator=gen)[: len(x)]
    floor_labels = train_y[pick] if labels is not None else None
    metrics = {
        "model": score(spec, domain, data_path, x, labels, reference, spec.seed),
        "data_floor": score(spec, domain, data_path, train_x[pick], floor_labels, reference, spec.seed),
        "num_samples": len(x), "num_reference": len(reference),
    }
    write_json(ctx.workdir / "metrics.json", metrics)
    flat = {f"{k}": v for k, v in metrics["model"].items() if isinstance(v, float)}
    lines = [f"| {k} | {v:.4g} | {metrics['data_floor'].get(k, float('nan')):.4g} |" for k, v in flat.items()]
    summary = "| metric | model | data floor |\n|---|---|---|\n" + "\n".join(lines)
    return StageOutput("metrics", metrics, summary)

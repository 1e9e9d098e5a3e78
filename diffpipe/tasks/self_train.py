"""The `self_train` stage: one generation of recursive training on the previous generation's samples.

Generation k (node `NAME.genk`, input `model` = generation k-1's checkpoint, generation 0 being the
stage's `model`):

1. sample a candidate pool from the input model with the domain's own sampler (the sample stage's code),
   pool_factor times the synthetic share for `random` / `entropy` selection, exactly the share for `none`;
2. keep the synthetic share: all (none), a uniform subset (random) or a greedy farthest-point subset
   (entropy), and add `real_fraction` of the set from the real training split (drawn afresh per generation);
3. train a model on that set with the pretrain stage's loop and publish it as a checkpoint, with the
   set itself as `train.zarr`;
4. score `eval_samples` samples of the new model: the domain's quality metrics against the held-out
   split, memorisation (nearest-neighbour distance to this generation's training set vs to held-out
   data) and the Kozachenko-Leonenko entropy of the training set, all in the domain's entropy features.

Generation 1 also reports the same measures for generation 0's model, from its candidate pool.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from diffpipe.errors import SpecError
from diffpipe.schemas import EvaluateStage, SampleStage
from diffpipe.schemas.self_train import SelfTrainStage
from diffpipe.storage.formats import open_dataset, write_dataset, write_json

from .context import StageContext, StageOutput
from .domain import SAMPLES_FILE, ImageDomain, TensorBatches
from .metrics.collapse import farthest_point_selection, kl_entropy, memorisation
from .pretrain import fit, publish_checkpoint
from .registry import get_domain, stage
from .sample import load_checkpoint
from .schedulers import make_scheduler

TRAIN_SET_FILE = "train.zarr"
"""The generation's training set (synthetic share first, then the real share), inside its checkpoint."""
POOL_SEED, EVAL_SEED = 7919, 104729
"""Sampler seed offsets per generation of the candidate pool and of the evaluation samples."""


def generation_spec(ctx: StageContext) -> tuple[int, SelfTrainStage, int]:
    """Index of the running stage in the pipeline, its options as generation k, and k."""
    spec: SelfTrainStage = ctx.pipeline.stage(ctx.node)
    return ctx.pipeline.stage_index(ctx.node), spec, spec.generations


def self_train_domain(ctx: StageContext, index: int) -> ImageDomain:
    """The data's domain, which must sample images and give entropy features; SpecError otherwise."""
    kind = ctx.pipeline.data.kind
    domain = get_domain(kind)
    if not supports_self_train(domain):
        raise SpecError(f"stages[{index}].selection", f"{kind} data cannot estimate the entropy of a sample set",
                        "data with entropy features (digits)", kind)
    return domain


def supports_self_train(domain: Any) -> bool:
    """Whether a domain can run self-training: an image domain with entropy features."""
    return isinstance(domain, ImageDomain) and hasattr(domain, "entropy_features")


def draw(ctx: StageContext, spec: SelfTrainStage, domain: ImageDomain, checkpoint: Path, n: int,
         seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples (and their labels) of the checkpoint folder `checkpoint`, drawn with the domain's sampler."""
    model, objective, info = load_checkpoint(checkpoint)
    scheduler = make_scheduler(objective, spec.scheduler.name, spec.scheduler.options)
    request = SampleStage(name="candidates", scheduler=spec.scheduler, num_samples=n, seed=seed,
                          guidance_scale=spec.guidance_scale)
    with tempfile.TemporaryDirectory(prefix="diffpipe-self-train-") as tmp:
        # as the stage itself (not the generation node), so the domain's sampler finds its spec fields
        inner = dataclasses.replace(ctx, workdir=Path(tmp), node=spec.name)
        domain.sample(inner, request, model.to(ctx.device), objective, scheduler, info)
        ds = open_dataset(Path(tmp) / SAMPLES_FILE).load()
    labels = torch.from_numpy(ds["label"].values) if "label" in ds else None
    return torch.from_numpy(ds["x"].values).float(), labels


def select(pool: torch.Tensor, m: int, policy: str, features: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Indices of the m pool rows kept by the selection policy."""
    if m == 0:
        return torch.arange(0)
    if policy == "entropy":
        return farthest_point_selection(features, m, gen)
    if policy == "random":
        return torch.randperm(len(pool), generator=gen)[:m]
    return torch.arange(m)


def training_set(ctx: StageContext, spec: SelfTrainStage, domain: ImageDomain, k: int) -> tuple[
        torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, dict[str, int]]:
    """This generation's training images and labels, the candidate pool and its labels, and the set's sizes."""
    real_x, real_y = domain.load(ctx.input_path("data"), "train")
    n = spec.data_size or len(real_x)
    n_real = round(spec.real_fraction * n)
    n_synthetic = n - n_real
    gen = ctx.generator(offset=POOL_SEED + k)
    pool_size = n_synthetic * (1 if spec.selection == "none" else spec.pool_factor)
    pool, pool_y = draw(ctx, spec, domain, ctx.input_path("model"), max(pool_size, 2), POOL_SEED + k)
    keep = select(pool, n_synthetic, spec.selection, domain.entropy_features(pool), gen)
    real = torch.randperm(len(real_x), generator=gen)[:n_real]
    x = torch.cat([pool[keep], real_x[real]])
    y = None if pool_y is None else torch.cat([pool_y[keep], real_y[real]])
    return x, y, pool, pool_y, {"size": n, "real": n_real, "synthetic": n_synthetic, "pool": len(pool)}


def measure(ctx: StageContext, spec: SelfTrainStage, domain: ImageDomain, samples: torch.Tensor,
            labels: torch.Tensor | None, train: torch.Tensor, k: int) -> dict[str, Any]:
    """Quality against held-out data, memorisation against `train`, and the entropy of the samples."""
    data_path = ctx.input_path("data")
    heldout, _ = domain.load(data_path, "test")
    quality = domain.score(EvaluateStage(name="quality", metrics=["mmd", "domain"], seed=k), data_path, samples,
                           labels, heldout)
    features = domain.entropy_features
    gen = ctx.generator(offset=EVAL_SEED + k)
    return {"quality": {key: v for key, v in quality.items() if isinstance(v, float)},
            "memorisation": memorisation(features(samples), features(train), features(heldout), gen),
            "sample_entropy": kl_entropy(features(samples), spec.entropy_neighbour)}


def write_training_set(ctx: StageContext, x: torch.Tensor, y: torch.Tensor | None, n_synthetic: int) -> None:
    """Store the generation's training set with a `synthetic` flag per image."""
    ds = xr.Dataset({"x": (("sample", "channel", "y", "x"), x.numpy()),
                     "synthetic": ("sample", np.arange(len(x)) < n_synthetic)})
    if y is not None:
        ds["label"] = ("sample", y.numpy().astype(np.int64))
    write_dataset(ds, ctx.workdir / TRAIN_SET_FILE)


@stage("self_train")
def run_self_train(ctx: StageContext) -> StageOutput:
    """Build generation k's training set, train on it, publish the checkpoint and the generation's measures."""
    index, spec, k = generation_spec(ctx)
    domain = self_train_domain(ctx, index)
    x, y, pool, pool_y, sizes = training_set(ctx, spec, domain, k)
    model, result, ema = fit(ctx, spec, TensorBatches(x.to(ctx.device), None if y is None else y.to(ctx.device)))
    output = publish_checkpoint(ctx, spec, model, ema, result)
    write_training_set(ctx, x, y, sizes["synthetic"])
    samples, labels = draw(ctx, spec, domain, ctx.workdir, spec.eval_samples, EVAL_SEED + k)
    entropy = {"training_set": kl_entropy(domain.entropy_features(x), spec.entropy_neighbour)}
    if sizes["synthetic"] > spec.entropy_neighbour:
        entropy["synthetic_share"] = kl_entropy(domain.entropy_features(x[: sizes["synthetic"]]),
                                                spec.entropy_neighbour)
    metrics: dict[str, Any] = {"generation": k, "selection": spec.selection, "real_fraction": spec.real_fraction,
                               "training_set": sizes, "entropy": entropy,
                               **measure(ctx, spec, domain, samples, labels, x, k), "training": output.metrics}
    if k == 1:
        real_train, _ = domain.load(ctx.input_path("data"), "train")
        metrics["generation_0"] = measure(ctx, spec, domain, pool, pool_y, real_train, 0)
    write_json(ctx.workdir / "metrics.json", metrics)
    m = metrics["memorisation"]
    summary = (f"generation {k} ({spec.selection} selection, real fraction {spec.real_fraction}): training-set "
               f"entropy {entropy['training_set']:.2f} nats, NN distance to train / held-out "
               f"{m['nn_distance_train']:.3f} / {m['nn_distance_heldout']:.3f}")
    return StageOutput("checkpoint", metrics, summary, output.images)

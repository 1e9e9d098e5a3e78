"""The `self_train` stage: one generation of recursive training on the previous generation's samples.

Generation k (node `NAME.genk`, input `model` = generation k-1's checkpoint, generation 0 being the
stage's `model`), for images (digits) or token sequences (the masked-diffusion tasks; how each is
sampled, scored and featurised: diffpipe/tasks/self_train_data.py):

1. sample a candidate pool from the input model, pool_factor times the synthetic share for `random` /
   `entropy` selection, exactly the share for `none`;
2. keep the synthetic share: all (none), a uniform subset (random) or a greedy farthest-point subset
   (entropy), and add `real_fraction` of the set from the real training split (drawn afresh per generation);
3. train a model on that set with the pretrain stage's loop and publish it as a checkpoint, with the
   set itself as `train.zarr`;
4. score `eval_samples` samples of the new model: the data's quality metrics against the held-out
   split, memorisation (nearest-neighbour distance to this generation's training set vs to held-out
   data) and the Kozachenko-Leonenko entropy of the training set, all in the data's features.

Generation 1 also reports the same measures for generation 0's model (its own evaluation samples,
memorisation against the real training split).
"""

from __future__ import annotations

from typing import Any

import torch

from diffpipe.errors import SpecError
from diffpipe.schemas.self_train import SelfTrainStage
from diffpipe.storage.formats import write_dataset, write_json

from .context import StageContext, StageOutput
from .domain import TensorBatches
from .metrics.collapse import farthest_point_selection, kl_entropy, memorisation
from .pretrain import fit, publish_checkpoint
from .registry import get_domain, stage
from .self_train_data import SampleSet, SelfTrainData, self_train_data

TRAIN_SET_FILE = "train.zarr"
"""The generation's training set (synthetic share first, then the real share), inside its checkpoint."""
POOL_SEED, EVAL_SEED = 7919, 104729
"""Sampler seed offsets per generation of the candidate pool and of the evaluation samples."""


def generation_spec(ctx: StageContext) -> tuple[int, SelfTrainStage, int]:
    """Index of the running stage in the pipeline, its options as generation k, and k."""
    spec: SelfTrainStage = ctx.pipeline.stage(ctx.node)
    return ctx.pipeline.stage_index(ctx.node), spec, spec.generations


def self_train_domain(ctx: StageContext, index: int) -> SelfTrainData:
    """The data's self_train view, which must give entropy features; SpecError otherwise."""
    kind = ctx.pipeline.data.kind
    data = self_train_data(get_domain(kind), index)
    if data is None:
        raise SpecError(f"stages[{index}].selection", f"{kind} data cannot estimate the entropy of a sample set",
                        "data with entropy features (digits, countdown, sudoku, rna_design)", kind)
    return data


def supports_self_train(domain: Any) -> bool:
    """Whether a domain can run self-training: images with entropy features, or token sequences."""
    return self_train_data(domain, 0) is not None


def select(pool: SampleSet, m: int, policy: str, features: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Indices of the m pool rows kept by the selection policy."""
    if m == 0:
        return torch.arange(0)
    if policy == "entropy":
        return farthest_point_selection(features, m, gen)
    if policy == "random":
        return torch.randperm(len(pool), generator=gen)[:m]
    return torch.arange(m)


def training_set(ctx: StageContext, spec: SelfTrainStage, data: SelfTrainData,
                 k: int) -> tuple[SampleSet, dict[str, int]]:
    """This generation's training set (synthetic share first) and its sizes."""
    real = data.real(ctx.input_path("data"), "train")
    n = spec.data_size or len(real)
    n_real = round(spec.real_fraction * n)
    n_synthetic = n - n_real
    gen = ctx.generator(offset=POOL_SEED + k)
    pool_size = n_synthetic * (1 if spec.selection == "none" else spec.pool_factor)
    pool = data.draw(ctx, spec, ctx.input_path("model"), max(pool_size, 2), POOL_SEED + k, "train")
    keep = select(pool, n_synthetic, spec.selection, data.features(pool.x), gen)
    chosen = pool.rows(keep).concat(real.rows(torch.randperm(len(real), generator=gen)[:n_real]))
    return chosen, {"size": n, "real": n_real, "synthetic": n_synthetic, "pool": len(pool)}


def measure(ctx: StageContext, spec: SelfTrainStage, data: SelfTrainData, samples: SampleSet, train: SampleSet,
            k: int) -> dict[str, Any]:
    """Quality against held-out data, memorisation against `train`, and the entropy of the samples."""
    data_path = ctx.input_path("data")
    heldout = data.real(data_path, "test")
    features = data.features
    gen = ctx.generator(offset=EVAL_SEED + k)
    return {"quality": data.quality(data_path, samples, heldout, k),
            "memorisation": memorisation(features(samples.x), features(train.x), features(heldout.x), gen),
            "sample_entropy": kl_entropy(features(samples.x), spec.entropy_neighbour)}


@stage("self_train")
def run_self_train(ctx: StageContext) -> StageOutput:
    """Build generation k's training set, train on it, publish the checkpoint and the generation's measures."""
    index, spec, k = generation_spec(ctx)
    data = self_train_domain(ctx, index)
    chosen, sizes = training_set(ctx, spec, data, k)
    batches = TensorBatches(chosen.x.to(ctx.device), None if chosen.cond is None else chosen.cond.to(ctx.device))
    model, result, ema = fit(ctx, spec, batches)
    output = publish_checkpoint(ctx, spec, model, ema, result)
    write_dataset(data.dataset(chosen, sizes["synthetic"]), ctx.workdir / TRAIN_SET_FILE)
    samples = data.draw(ctx, spec, ctx.workdir, spec.eval_samples, EVAL_SEED + k, "test")
    entropy = {"training_set": kl_entropy(data.features(chosen.x), spec.entropy_neighbour)}
    if sizes["synthetic"] > spec.entropy_neighbour:
        entropy["synthetic_share"] = kl_entropy(data.features(chosen.x[: sizes["synthetic"]]),
                                                spec.entropy_neighbour)
    metrics: dict[str, Any] = {"generation": k, "selection": spec.selection, "real_fraction": spec.real_fraction,
                               "training_set": sizes, "entropy": entropy,
                               **measure(ctx, spec, data, samples, chosen, k), "training": output.metrics}
    if k == 1:
        zero = data.draw(ctx, spec, ctx.input_path("model"), spec.eval_samples, EVAL_SEED, "test")
        metrics["generation_0"] = measure(ctx, spec, data, zero, data.real(ctx.input_path("data"), "train"), 0)
    write_json(ctx.workdir / "metrics.json", metrics)
    m = metrics["memorisation"]
    summary = (f"generation {k} ({spec.selection} selection, real fraction {spec.real_fraction}): training-set "
               f"entropy {entropy['training_set']:.2f} nats, NN distance to train / held-out "
               f"{m['nn_distance_train']:.3f} / {m['nn_distance_heldout']:.3f}")
    return StageOutput("checkpoint", metrics, summary, output.images)

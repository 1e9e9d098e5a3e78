"""The `neural_sampler` stage: train a sampler for the data's energy target through the shared loop, then
publish its samples with log importance weights.

Artifact: `samples.zarr` (x, log_w; attrs: method, energy evaluations), `model/` (diffusers layout,
`model_online/` with EMA), `losses.json`, a loss curve, `metrics.json` (its wall times move to the manifest's
lineage on publishing, so identical samples keep one digest). Checkpoints hold the
method's buffer and counters (the loop's loss state), so a killed run resumes to identical weights.

Across processes (`runtime.distributed`, launched by tasks/launch.py) every rank simulates the same
global batch of trajectories from the same generator, while the method's network and the energy target
run on this rank's rows of every call and their outputs are gathered (`distributed.RowSharded`,
differentiably; `CountingTarget`): buffers, importance weights and the loss are the whole batch's on
every rank, DDP / FSDP2's average of the gradients is the one-process gradient, and the energy count is
one process's. Rank 0 publishes.
"""

from __future__ import annotations

import time

import torch
import xarray as xr

from diffpipe.schemas.samplers import NeuralSamplerBase
from diffpipe.storage.formats import write_dataset, write_json

from ..context import StageContext, StageOutput
from ..distributed import row_sharded
from ..registry import get_domain, get_implementation, stage
from ..seeding import seeded
from ..targets import make_target
from ..training import TrainConfig, publish_losses, published_weights, save_trained, train
from . import adjoint, mdns, naas, pdns, pis  # noqa: F401  (imported here so their code is in this stage's key)
from .common import CountingTarget

SAMPLES_FILE = "samples.zarr"


def train_config(spec: NeuralSamplerBase) -> TrainConfig:
    """The shared loop's options of a sampler stage (FLOPs are not counted: steps differ in kind)."""
    return TrainConfig(steps=spec.steps, lr=spec.lr, weight_decay=spec.weight_decay, warmup_steps=spec.warmup_steps,
                       grad_clip=spec.grad_clip, ema_decay=spec.ema_decay, checkpoint_every=spec.checkpoint_every,
                       log_every=spec.log_every, count_flops=False)


def draw(method, model: torch.nn.Module, n: int, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples and their log weights from `model`, in batches."""
    xs, ws = [], []
    for start in range(0, n, batch):
        x, log_w = method.sample(model, min(batch, n - start), gen)
        xs.append(x.cpu())
        ws.append(log_w.cpu())
    return torch.cat(xs), torch.cat(ws)


@stage("neural_sampler")
def run_neural_sampler(ctx: StageContext) -> StageOutput:
    """Train the method's network on the target, publish samples, weights and the checkpoint."""
    spec: NeuralSamplerBase = ctx.pipeline.stage(ctx.node)
    target = CountingTarget(make_target(ctx.pipeline.data.target))
    with seeded(ctx.runtime.seed + spec.seed):
        model = get_domain(ctx.pipeline.data.kind).build_model(ctx.pipeline.model, ctx).to(ctx.device)
    method = get_implementation("method", spec.method)(spec, target, row_sharded(model), ctx.device)
    model, result, ema = train(ctx, model, method.step_loss, train_config(spec),
                               ctx.generator(offset=1 + 1000 * spec.seed), loss_state=method)
    train_evals = target.evals
    t0 = time.perf_counter()
    x, log_w = draw(method, row_sharded(published_weights(model, ema)), spec.num_samples, spec.batch_size,
                    ctx.generator(offset=2 + 1000 * spec.seed))
    sample_wall = time.perf_counter() - t0
    if not torch.isfinite(log_w).all() or not torch.isfinite(x.double()).all():
        raise FloatingPointError(f"{spec.method} produced NaN or infinite samples or weights")
    coord = "site" if target.discrete else "coord"
    attrs = {"stage": ctx.node, "method": spec.method, "energy_evals": train_evals}
    write_dataset(xr.Dataset({"x": (("sample", coord), x.numpy()), "log_w": ("sample", log_w.numpy())},
                             attrs=attrs), ctx.workdir / SAMPLES_FILE)
    out = ctx.workdir
    save_trained(model.cpu(), ema, out)
    write_json(out / "training.json", {"method": spec.method, "steps": spec.steps, "ema": spec.ema_decay is not None})
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / len(log_w))
    tail = result.losses[-max(1, spec.steps // 10):]
    metrics = {"method": spec.method, "final_loss": sum(tail) / len(tail), "steps": spec.steps,
               "energy_evals": train_evals, "ess": ess, **result.timing(), "sampling_wall_s": sample_wall,
               "log_z_estimate": float(torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(len(log_w))))),
               "parameters": sum(p.numel() for p in model.parameters())}
    write_json(out / "metrics.json", metrics)
    curve = publish_losses(result.losses, out, f"{ctx.node}: {spec.method}")
    summary = (f"Trained `{spec.method}` for {spec.steps} steps ({train_evals} energy evaluations); "
               f"{spec.num_samples} samples, ESS {ess:.3f}.")
    return StageOutput("samples", metrics, summary, {"loss curve": curve})

"""Pretrain stage: train the domain's network on its data with one objective."""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.training_utils import EMAModel

from diffpipe.schemas import PretrainStage
from diffpipe.storage.formats import MODEL_DIR, ONLINE_MODEL_DIR, SCHEDULER_DIR, TRAINING_FILE, write_json

from .context import StageContext, StageOutput
from .domain import BatchSource
from .nets import load_model
from .objectives import make_loss
from .registry import get_domain, stage
from .schedulers import make_scheduler
from .seeding import seeded
from .training import TrainConfig, TrainResult, publish_losses, save_trained, train


def initial_model(ctx: StageContext, init: str | None) -> ModelMixin:
    """Weights of the `init` checkpoint (its online weights when present), else a fresh seeded network."""
    if init is not None:
        path = ctx.input_path("init")
        online = path / ONLINE_MODEL_DIR
        return load_model(online if online.exists() else path / MODEL_DIR)
    with seeded(ctx.runtime.seed):
        return get_domain(ctx.pipeline.data.kind).build_model(ctx.pipeline.model, ctx)


def train_config(spec: PretrainStage) -> TrainConfig:
    """The loop options of a training stage spec."""
    return TrainConfig(steps=spec.steps, lr=spec.lr, weight_decay=spec.weight_decay, warmup_steps=spec.warmup_steps,
                       grad_clip=spec.grad_clip, ema_decay=spec.ema_decay, checkpoint_every=spec.checkpoint_every,
                       log_every=spec.log_every)


def fit(ctx: StageContext, spec: PretrainStage,
        batches: BatchSource) -> tuple[ModelMixin, TrainResult, EMAModel | None]:
    """Train the domain's network (from `spec.init` or fresh seeded weights) on `batches` with `spec`'s options."""
    domain = get_domain(ctx.pipeline.data.kind)
    model = initial_model(ctx, spec.init).to(ctx.device)
    net, loss_fn = domain.net(model), make_loss(spec.objective)

    def step_loss(gen: torch.Generator) -> torch.Tensor:
        x0, cond = batches.next(gen, spec.batch_size)
        drop = torch.rand(spec.batch_size, generator=gen) < spec.cond_dropout
        return loss_fn(net, x0, domain.drop_condition(model, cond, drop), gen).mean()

    return train(ctx, model, step_loss, train_config(spec), ctx.generator(offset=1))


def publish_checkpoint(ctx: StageContext, spec: PretrainStage, model: ModelMixin, ema: EMAModel | None,
                       result: TrainResult) -> StageOutput:
    """Write `model/` (diffusers layout), `scheduler/`, `training.json` and the loss curve; training metrics."""
    out = ctx.workdir
    save_trained(model.cpu(), ema, out)
    scheduler = make_scheduler(spec.objective, None, {})
    if scheduler is not None:
        scheduler.save_pretrained(out / SCHEDULER_DIR)
    write_json(out / TRAINING_FILE, {"objective": spec.objective.model_dump(mode="json"), "steps": spec.steps,
                                     "ema": spec.ema_decay is not None,
                                     "num_classes": getattr(ctx.pipeline.data, "num_classes", None)})
    tail = result.losses[-max(1, spec.steps // 10):]
    metrics = {"final_loss": sum(tail) / len(tail), "steps": spec.steps, **result.metrics(spec.steps),
               "parameters": sum(p.numel() for p in model.parameters())}
    curve = publish_losses(result.losses, out, f"{ctx.node}: {spec.objective.kind}")
    summary = f"Trained `{type(model).__name__}` for {spec.steps} steps with {spec.objective.kind}."
    return StageOutput("checkpoint", metrics, summary, {"loss curve": curve})


@stage("pretrain")
def run_pretrain(ctx: StageContext) -> StageOutput:
    """Train, publish `model/` (diffusers layout), `scheduler/`, the loss curve and training metrics."""
    spec: PretrainStage = ctx.pipeline.stage(ctx.node)
    model, result, ema = fit(ctx, spec, get_domain(ctx.pipeline.data.kind).batches(ctx, ctx.device))
    output = publish_checkpoint(ctx, spec, model, ema, result)
    write_json(ctx.workdir / "metrics.json", output.metrics)
    return output

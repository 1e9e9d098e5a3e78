"""Pretrain stage: train a diffusers model on the pipeline's data with one objective."""

from __future__ import annotations

import torch

from diffpipe.schemas import PretrainStage
from diffpipe.storage.formats import MODEL_DIR, ONLINE_MODEL_DIR, SCHEDULER_DIR, TRAINING_FILE, load_model, write_json

from .context import StageContext, StageOutput
from .nets import build_image_model, call_image_model, null_label
from .objectives import make_loss, make_scheduler
from .registry import DOMAINS, stage
from .training import TrainConfig, plot_losses, save_trained, train


def _initial_model(ctx: StageContext, spec: PretrainStage):
    data = ctx.pipeline.data
    if spec.init is not None:
        path = ctx.input_path("init")
        online = path / ONLINE_MODEL_DIR
        return load_model(online if online.exists() else path / MODEL_DIR)
    torch.manual_seed(ctx.runtime.seed)
    return build_image_model(ctx.pipeline.model, data.sample_shape, data.num_classes)


@stage("pretrain")
def run_pretrain(ctx: StageContext) -> StageOutput:
    """Train, publish `model/` (diffusers layout), `scheduler/`, the loss curve and training metrics."""
    spec: PretrainStage = ctx.pipeline.stage(ctx.node)
    domain = DOMAINS[ctx.pipeline.data.kind]
    x, labels = domain.load(ctx.input_path("data"), "train")
    device = ctx.device
    x, labels = x.to(device), labels.to(device)
    model = _initial_model(ctx, spec)
    null = null_label(model)
    loss_fn = make_loss(spec.objective)

    def net(xt, t, lab):
        return call_image_model(model, xt, t, lab)

    def step_loss(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, x.shape[0], (spec.batch_size,), generator=gen).to(device)
        lab = None
        if null is not None:
            lab = labels[idx].clone()
            drop = (torch.rand(spec.batch_size, generator=gen) < spec.cond_dropout).to(device)
            lab[drop] = null
        return loss_fn(net, x[idx], lab, gen).mean()

    cfg = TrainConfig(steps=spec.steps, lr=spec.lr, weight_decay=spec.weight_decay, warmup_steps=spec.warmup_steps,
                      grad_clip=spec.grad_clip, ema_decay=spec.ema_decay, checkpoint_every=spec.checkpoint_every,
                      log_every=spec.log_every)
    result, ema = train(ctx, model, step_loss, cfg, ctx.generator(offset=1))
    out = ctx.workdir
    save_trained(model.cpu(), ema, out)
    make_scheduler(spec.objective, None, {}).save_pretrained(out / SCHEDULER_DIR)
    write_json(out / TRAINING_FILE, {"objective": spec.objective.model_dump(mode="json"), "steps": spec.steps,
                                     "ema": spec.ema_decay is not None, "num_classes": ctx.pipeline.data.num_classes})
    tail = result.losses[-max(1, spec.steps // 10):]
    metrics = {"final_loss": sum(tail) / len(tail), "steps": spec.steps, "resumed_from_step": result.resumed_from,
               "steps_per_s": result.steps_per_s, "train_wall_s": result.wall_s,
               "parameters": sum(p.numel() for p in model.parameters())}
    write_json(out / "metrics.json", metrics)
    curve = plot_losses(result.losses, out / "loss_curve.png", f"{ctx.node}: {spec.objective.kind}")
    summary = f"Trained `{type(model).__name__}` for {spec.steps} steps with {spec.objective.kind}."
    return StageOutput("checkpoint", metrics, summary, {"loss curve": curve})

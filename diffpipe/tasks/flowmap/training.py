"""The loop of the midtrain and distill stages: the frozen teacher, the student's start, the method's loss, publishing.

Any continuous domain whose network `FlowMapNet` can wrap works: the teacher is called through the
domain's `net` hook, batches and conditions come from its `batches` / `drop_condition` hooks, and a
random student is built by its `build_model` hook. Internal times throughout (timeconv); the teacher
sees the diffusers value 1000 t it was trained with.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMapEulerDiscreteScheduler, ModelMixin
from diffusers.training_utils import EMAModel

from diffpipe.schemas.distill import TwoTimeTraining
from diffpipe.storage.formats import MODEL_DIR, SCHEDULER_DIR, TRAINING_FILE, write_json

from ..context import StageContext, StageOutput
from ..domain import Domain
from ..nets import load_model
from ..nets.flowmap import FlowMapNet, TwoTimeCall
from ..pretrain import train_config
from ..registry import get_domain, get_implementation
from ..sample import load_checkpoint
from ..seeding import seeded
from ..training import TrainResult, publish_losses, save_trained, train
from . import FlowMapLoss, VelocityFn
from .teachers import velocity_teacher


def stage_domain(ctx: StageContext) -> Domain:
    """The domain of the pipeline's data."""
    return get_domain(ctx.pipeline.data.kind)


def load_teacher(ctx: StageContext) -> tuple[ModelMixin, VelocityFn]:
    """The frozen teacher (published EMA weights of input `teacher`) and its velocity in internal time.

    Flow-matching, EDM and DDPM teachers all work: the velocity is converted at the edge (flowmap.teachers).
    """
    model, objective, _ = load_checkpoint(ctx.input_path("teacher"))
    model = model.to(ctx.device).requires_grad_(False)
    return model, velocity_teacher(objective, stage_domain(ctx).net(model))


def initial_student(ctx: StageContext, spec: TwoTimeTraining, init: ModelMixin | str | None) -> FlowMapNet:
    """Student start: a one-time model's weights (zero gap embedding), input `init`'s checkpoint, or random.

    Seeded from the runtime seed: the new gap embedding's first layer is random in every case.
    """
    with seeded(ctx.runtime.seed):
        if isinstance(init, ModelMixin):
            return FlowMapNet.from_teacher(init)
        if init is None:
            model = stage_domain(ctx).build_model(ctx.pipeline.model, ctx)
            return FlowMapNet.from_teacher(model, time_scale=spec.random_init_time_scale)
        model = load_model(ctx.input_path(init) / MODEL_DIR)
        return model if isinstance(model, FlowMapNet) else FlowMapNet.from_teacher(model)


def method_loss(ctx: StageContext, spec: TwoTimeTraining, teacher: VelocityFn | None = None) -> FlowMapLoss:
    """The registered loss of the spec's `method`, built from the spec and, if it needs one, the teacher's
    velocity (`teacher`, else loaded from input `teacher`)."""
    loss_class = get_implementation("method", spec.method)
    if not loss_class.needs_teacher:
        return loss_class(spec)
    return loss_class(spec, teacher if teacher is not None else load_teacher(ctx)[1])


def train_student(ctx: StageContext, spec: TwoTimeTraining, student: FlowMapNet,
                  loss_fn: FlowMapLoss) -> tuple[FlowMapNet, TrainResult, EMAModel | None]:
    """Run the shared resumable loop on `loss_fn(student, x0, cond, gen)` with condition dropout; the trained student,
    the loop's result and the EMA."""
    domain = stage_domain(ctx)
    batches = domain.batches(ctx, ctx.device)
    net = TwoTimeCall(student.to(ctx.device), domain.base_call)

    def step_loss(gen: torch.Generator) -> torch.Tensor:
        x0, cond = batches.next(gen, spec.batch_size)
        drop = torch.rand(spec.batch_size, generator=gen) < spec.cond_dropout
        return loss_fn(net, x0, domain.drop_condition(student.base, cond, drop), gen).mean()

    return train(ctx, student, step_loss, train_config(spec), ctx.generator(offset=1),
                 loss_fn.loop_state(net))


def publish_student(ctx: StageContext, spec: TwoTimeTraining, student: FlowMapNet, ema: EMAModel | None,
                    result: TrainResult, info: dict[str, Any]) -> StageOutput:
    """Write `model/` (FlowMapNet, diffusers layout), `scheduler/`, training.json, metrics and the loss curve."""
    out = ctx.workdir
    save_trained(student.cpu(), ema, out)
    FlowMapEulerDiscreteScheduler().save_pretrained(out / SCHEDULER_DIR)
    write_json(out / TRAINING_FILE, {"objective": spec.objective.model_dump(mode="json"), "stage": spec.stage,
                                     "steps": spec.steps, "ema": spec.ema_decay is not None,
                                     "num_classes": getattr(ctx.pipeline.data, "num_classes", None), **info})
    tail = result.losses[-max(1, spec.steps // 10):]
    metrics = {"final_loss": sum(tail) / len(tail), "steps": spec.steps, **result.metrics(spec.steps),
               "parameters": sum(p.numel() for p in student.parameters())}
    write_json(out / "metrics.json", metrics)
    title = f"{ctx.node}: {spec.stage} {info['method']}"
    curve = publish_losses(result.losses, out, title)
    summary = f"Trained a two-time `FlowMapNet` for {spec.steps} steps with {info['method']} ({spec.objective.kind})."
    return StageOutput("checkpoint", metrics, summary, {"loss curve": curve})

"""Distill stage: MeanFlow training, MeanFlow distillation from a teacher, or consistency distillation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffpipe.schemas.distill import ConsistencyDistill, MeanFlowDistill, MeanFlowTeacherDistill

from .context import StageContext, StageOutput
from .flowmap.consistency import ConsistencyDistillationLoss
from .flowmap.meanflow import MeanFlowDistillLoss, MeanFlowLoss
from .flowmap_stage import initial_student, load_teacher, loss_options, publish_student, train_student
from .nets.flowmap import FlowMapNet
from .registry import stage


@dataclass
class TargetNetworkState:
    """The EMA target network of consistency distillation as loop state, so resumed runs stay exact."""

    loss: ConsistencyDistillationLoss
    student: FlowMapNet

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The target's weights (empty before its first update)."""
        return self.loss.target_state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the target's weights."""
        self.loss.load_target_state_dict(self.student, state)


def distill_loss(spec: MeanFlowDistill | MeanFlowTeacherDistill | ConsistencyDistill, ctx: StageContext) -> Any:
    """The loss of the spec's method (teacher-based methods load the frozen teacher)."""
    if isinstance(spec, MeanFlowDistill):
        return MeanFlowLoss(**loss_options(MeanFlowLoss, spec))
    _, velocity = load_teacher(ctx)
    if isinstance(spec, MeanFlowTeacherDistill):
        return MeanFlowDistillLoss(velocity, **loss_options(MeanFlowLoss, spec))
    return ConsistencyDistillationLoss(velocity, **loss_options(ConsistencyDistillationLoss, spec))


@stage("distill")
def run_distill(ctx: StageContext) -> StageOutput:
    """Train the student with the method's loss; publish a FlowMapNet checkpoint."""
    spec = ctx.pipeline.stage(ctx.node)
    student = initial_student(ctx, spec, "init" if spec.init is not None else None)
    loss_fn = distill_loss(spec, ctx)
    state = TargetNetworkState(loss_fn, student) if isinstance(loss_fn, ConsistencyDistillationLoss) else None
    result, ema = train_student(ctx, spec, student, loss_fn, state)
    info = {"method": spec.method, "init": spec.init or "random"}
    return publish_student(ctx, spec, student, ema, result, info)

"""Typed pipeline specs (Pydantic v2): every option, default and unit, once."""

from .artifact import ArtifactKind, ArtifactRef
from .data import DataSpec, DigitsData
from .models import DiTSpec, ModelSpec, UNet2DSpec
from .objectives import DDPM, EDM, FlowMatching, Objective, Regression
from .pipeline import STAGE_CLASSES, CrossReferenceError, PipelineSpec, StageSpec
from .runtime import RuntimeSpec
from .stages import EvaluateStage, PretrainStage, SampleStage, SchedulerSpec, StageBase
from .storage import StorageSpec
from .sweep import SweepSpec

__all__ = [
    "DDPM", "EDM", "STAGE_CLASSES", "ArtifactKind", "ArtifactRef", "CrossReferenceError", "DataSpec",
    "DiTSpec", "DigitsData", "EvaluateStage", "FlowMatching", "ModelSpec", "Objective", "PipelineSpec",
    "PretrainStage", "Regression", "RuntimeSpec", "SampleStage", "SchedulerSpec", "StageBase", "StageSpec",
    "StorageSpec", "SweepSpec",
    "UNet2DSpec",
]

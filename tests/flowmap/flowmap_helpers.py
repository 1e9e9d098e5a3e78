"""Helpers shared by the flow-map tests."""

from __future__ import annotations

import torch


def generator(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def method_spec(method: str, **options):
    """The schema object of a flow-map method (a midtrain or distill stage) with its defaults, some overridden."""
    from diffpipe.schemas.distill import ConsistencyDistill, MeanFlowTeacherDistill, MeanFlowTraining, MidtrainStage

    classes = {"cmt": MidtrainStage, "meanflow": MeanFlowTraining, "meanflow_distill": MeanFlowTeacherDistill,
               "consistency": ConsistencyDistill}
    return classes[method](name=method, **options)

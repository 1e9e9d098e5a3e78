"""Networks built from `ModelSpec` with random weights, and one way to call them."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel, ModelMixin

from diffpipe.errors import SpecError
from diffpipe.schemas import ModelSpec
from diffpipe.storage.formats import read_json

MODEL_CLASS_MODULES = {
    "FlowMapNet": "diffpipe.tasks.nets.flowmap",
    "VelocityMLP": "diffpipe.tasks.nets.flowmap",
    "AtomTransformer": "diffpipe.tasks.nets.atom_transformer",
    "MaskedDiffusionTransformer": "diffpipe.tasks.nets.mdlm",
    "TimeMLP": "diffpipe.tasks.nets.time_mlp",
}
"""diffpipe's own ModelMixin classes by class name -> their module (any other name is a diffusers class)."""


def model_class(name: str) -> type[ModelMixin]:
    """The ModelMixin class called `name`: one of diffpipe's (imported on first use) or a diffusers class."""
    import diffusers

    if name in MODEL_CLASS_MODULES:
        return getattr(importlib.import_module(MODEL_CLASS_MODULES[name]), name)
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelMixin)):
        raise ValueError(f"unknown model class '{name}'")
    return cls


def load_model(path: Path) -> ModelMixin:
    """Load a diffusers model folder (config.json + safetensors) written by `save_model`, whatever its class."""
    name = read_json(path / "config.json")["_class_name"]
    try:
        cls = model_class(name)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return cls.from_pretrained(path, low_cpu_mem_usage=False)


IMAGE_ARCHS = ("unet2d", "dit")
"""Archs an image domain can build (each a builder `(spec, sample_shape, num_labels)` in its own module)."""


def build_image_model(spec: ModelSpec, sample_shape: tuple[int, ...], num_classes: int | None) -> ModelMixin:
    """A diffusers image model for samples of shape (C, H, W); classes get one extra null label."""
    from diffpipe.tasks.registry import get_implementation

    if spec.arch not in IMAGE_ARCHS:
        raise SpecError("model.arch", "image data needs an image network", " or ".join(IMAGE_ARCHS), repr(spec.arch))
    return get_implementation("arch", spec.arch)(spec, sample_shape, None if num_classes is None else num_classes + 1)


def null_label(model: ModelMixin) -> int | None:
    """Index of the 'no class' label of a class-conditional model (None: unconditional)."""
    n = getattr(model.config, "num_class_embeds", None) or getattr(model.config, "num_embeds_ada_norm", None)
    return None if n in (None, 1) else n - 1


def call_image_model(
    model: ModelMixin, x: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    """Run a diffusers image model on a batch with per-sample timesteps (B,) and optional class labels."""
    if isinstance(model, DiTTransformer2DModel):
        if labels is None:
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return model(x, timestep=timestep, class_labels=labels).sample
    return model(x, timestep, class_labels=labels).sample

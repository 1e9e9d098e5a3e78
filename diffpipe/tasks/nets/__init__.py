"""Networks built from `ModelSpec` with random weights, and one way to call them."""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, ModelMixin

from diffpipe.errors import SpecError
from diffpipe.schemas import ModelSpec

CUSTOM_MODELS: dict[str, type[ModelMixin]] = {}
"""diffpipe's own ModelMixin classes by class name, so `load_model` finds them."""


def register_model(cls: type[ModelMixin]) -> type[ModelMixin]:
    """Make a diffpipe ModelMixin class loadable by name from a checkpoint folder."""
    CUSTOM_MODELS[cls.__name__] = cls
    return cls


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

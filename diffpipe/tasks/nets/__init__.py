"""Networks built from `ModelSpec` with random weights, and one way to call them."""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, ModelMixin, UNet2DModel

from diffpipe.schemas import DiTSpec, ModelSpec, UNet2DSpec

CUSTOM_MODELS: dict[str, type[ModelMixin]] = {}
"""diffpipe's own ModelMixin classes by class name, so `load_model` finds them."""


def register_model(cls: type[ModelMixin]) -> type[ModelMixin]:
    """Make a diffpipe ModelMixin class loadable by name from a checkpoint folder."""
    CUSTOM_MODELS[cls.__name__] = cls
    return cls


def build_image_model(spec: ModelSpec, sample_shape: tuple[int, ...], num_classes: int | None) -> ModelMixin:
    """A diffusers image model for samples of shape (C, H, W); classes get one extra null label."""
    channels, height, _ = sample_shape
    labels = None if num_classes is None else num_classes + 1
    if isinstance(spec, UNet2DSpec):
        levels = len(spec.block_out_channels)
        attn = spec.attention
        down = tuple("AttnDownBlock2D" if attn and i == levels - 1 else "DownBlock2D" for i in range(levels))
        up = tuple("AttnUpBlock2D" if attn and i == 0 else "UpBlock2D" for i in range(levels))
        return UNet2DModel(
            sample_size=height, in_channels=channels, out_channels=channels,
            block_out_channels=spec.block_out_channels, layers_per_block=spec.layers_per_block,
            down_block_types=down, up_block_types=up, norm_num_groups=spec.norm_num_groups,
            dropout=spec.dropout, num_class_embeds=labels,
        )
    if isinstance(spec, DiTSpec):
        return DiTTransformer2DModel(
            num_attention_heads=spec.num_attention_heads, attention_head_dim=spec.attention_head_dim,
            in_channels=channels, out_channels=channels, num_layers=spec.num_layers, sample_size=height,
            patch_size=spec.patch_size, num_embeds_ada_norm=labels or 1, norm_num_groups=1,
        )
    raise TypeError(f"no image model for arch '{spec.arch}'")


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

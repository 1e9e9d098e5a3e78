"""Networks, built from config with random weights: a union on `arch`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import FieldError, Strict
from .cei import AtomTransformerSpec
from .climate import SPFSpec
from .reasoning import MDLMSpec
from .samplers import TimeMLPSpec


class UNet2DSpec(Strict):
    """diffusers `UNet2DModel` over image-like samples."""

    arch: Literal["unet2d"] = "unet2d"
    block_out_channels: tuple[Annotated[int, Field(ge=1)], ...] = Field(default=(32, 64), min_length=1)
    """Channels per resolution level (one down/up block each; each level but the last halves the resolution)."""
    layers_per_block: int = Field(default=1, ge=1)
    """ResNet layers per block."""
    attention: bool = True
    """Use self-attention in the lowest-resolution blocks."""
    norm_num_groups: int = Field(default=8, ge=1)
    """Groups of every GroupNorm (must divide every channel count)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout inside the ResNet blocks."""

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> UNet2DSpec:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise FieldError("norm_num_groups", f"must divide every channel count; {bad} are not multiples",
                             f"a divisor of each of {list(self.block_out_channels)}", str(self.norm_num_groups))
        return self


class DiTSpec(Strict):
    """diffusers `DiTTransformer2DModel` (patchified transformer with AdaLN-Zero)."""

    arch: Literal["dit"] = "dit"
    num_layers: int = Field(default=4, ge=1)
    """Transformer blocks."""
    num_attention_heads: int = Field(default=2, ge=1)
    """Attention heads per block."""
    attention_head_dim: int = Field(default=32, ge=8)
    """Width of each head."""
    patch_size: int = Field(default=2, ge=1)
    """Side of the square patches (must divide the image side)."""


ModelSpec = Annotated[UNet2DSpec | DiTSpec | AtomTransformerSpec | MDLMSpec | SPFSpec | TimeMLPSpec,
                      Field(discriminator="arch")]

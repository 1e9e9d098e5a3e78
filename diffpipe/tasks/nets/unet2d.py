"""`arch: unet2d`: diffusers' UNet2DModel sized for image-like samples."""

from __future__ import annotations

from diffusers import UNet2DModel

from diffpipe.schemas import UNet2DSpec
from diffpipe.tasks.registry import implements


def unet_block_types(levels: int, attention: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down and up block types: plain ResNet blocks, self-attention at the lowest resolution when asked."""
    down = tuple("AttnDownBlock2D" if attention and i == levels - 1 else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if attention and i == 0 else "UpBlock2D" for i in range(levels))
    return down, up


@implements("arch", "unet2d")
def build_unet2d(spec: UNet2DSpec, sample_shape: tuple[int, ...], num_labels: int | None) -> UNet2DModel:
    """A UNet2DModel for samples of shape (C, H, W) with `num_labels` class embeddings (None: unconditional)."""
    channels, height, _ = sample_shape
    down, up = unet_block_types(len(spec.block_out_channels), spec.attention)
    return UNet2DModel(
        sample_size=height, in_channels=channels, out_channels=channels,
        block_out_channels=spec.block_out_channels, layers_per_block=spec.layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=spec.norm_num_groups,
        dropout=spec.dropout, num_class_embeds=num_labels,
    )

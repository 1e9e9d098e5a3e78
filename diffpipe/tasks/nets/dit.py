"""`arch: dit`: diffusers' DiTTransformer2DModel (patchified transformer with AdaLN-Zero)."""

from __future__ import annotations

from diffusers import DiTTransformer2DModel

from diffpipe.schemas import DiTSpec
from diffpipe.tasks.registry import implements


@implements("arch", "dit")
def build_dit(spec: DiTSpec, sample_shape: tuple[int, ...], num_labels: int | None) -> DiTTransformer2DModel:
    """A DiT for samples of shape (C, H, W); AdaLN always takes a label (one dummy label when unconditional)."""
    channels, height, _ = sample_shape
    return DiTTransformer2DModel(
        num_attention_heads=spec.num_attention_heads, attention_head_dim=spec.attention_head_dim,
        in_channels=channels, out_channels=channels, num_layers=spec.num_layers, sample_size=height,
        patch_size=spec.patch_size, num_embeds_ada_norm=num_labels or 1, norm_num_groups=1,
    )

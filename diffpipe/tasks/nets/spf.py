"""`arch: spf`: the UNet shared by every level of a Spatiotemporal Pyramid Flow (climate emulation).

The levels and their training and sampling live with the climate domain (`tasks/data/climate/pyramid.py`);
this builds the one network they share, after checking the pyramid against the store's grid.
"""

from __future__ import annotations

from diffusers import UNet2DModel

from diffpipe.schemas.climate import SPFSpec, check_pyramid
from diffpipe.tasks.registry import implements

from .unet2d import unet_block_types


@implements("arch", "spf")
def build_spf_unet(spec: SPFSpec, grid: tuple[int, int], in_channels: int, out_channels: int,
                   year_embedding: bool, months_per_year: int = 1) -> UNet2DModel:
    """The pyramid's UNet for a (lat, lon) grid of a store with `months_per_year` records a year, padded to its
    resolution levels; SpecError for a bad pyramid."""
    check_pyramid(spec.levels, grid, months_per_year)
    factor = 2 ** (len(spec.block_out_channels) - 1)
    down, up = unet_block_types(len(spec.block_out_channels), spec.attention)
    return UNet2DModel(
        sample_size=tuple(-(-side // factor) * factor for side in grid), in_channels=in_channels,
        out_channels=out_channels, block_out_channels=spec.block_out_channels,
        layers_per_block=spec.layers_per_block, down_block_types=down, up_block_types=up,
        norm_num_groups=spec.norm_num_groups, dropout=spec.dropout,
        class_embed_type="timestep" if year_embedding else None,
    )

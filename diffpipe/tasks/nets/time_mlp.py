"""A time-conditioned MLP u(t, x) for continuous neural samplers (the `time_mlp` arch)."""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from diffpipe.tasks.registry import implements


@implements("arch", "time_mlp")
class TimeMLP(ModelMixin, ConfigMixin):
    """MLP on [x, sinusoidal(t)] with SiLU; the output layer starts at zero (the untrained sampler is the reference)."""

    @register_to_config
    def __init__(self, dim: int, hidden: int = 128, layers: int = 3, time_embedding: int = 32):
        super().__init__()
        widths = [dim + time_embedding] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*blocks)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        half = time_embedding // 2
        self.register_buffer("frequencies", torch.exp(torch.linspace(0.0, math.log(1000.0), half)), persistent=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """u(t, x) for times t (B,) in [0, 1] and states x (B, dim)."""
        angles = t[:, None] * self.frequencies[None, :]
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.out(self.body(torch.cat([x, emb.to(x)], dim=-1)))

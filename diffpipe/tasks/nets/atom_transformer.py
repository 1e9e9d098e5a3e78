"""Conditional diffusion transformer over atoms for Coulomb explosion imaging (and its regressor twin).

One token per ion carries its element (embedding), charge (embedding), measured momentum and, in
diffusion mode, its noisy coordinate. Attention is over the atoms of one event; padding atoms are
masked as keys and their outputs are zero. A per-head attention bias is computed from momentum pairs
(cosine of the angle, log magnitudes) and, in diffusion mode, from distances of the noisy
coordinates. The timestep modulates every block (adaLN, DiT-style).

Rotations, the choice and why: the network works in a frame defined by the momenta. The frame's
axes are the eigenvectors of the momentum tensor sum_i p_i p_i^T (largest eigenvalue first), each
axis' sign fixed so that the third moment sum_i (p_i . e)^3 is >= 0, the last axis set to
e1 x e2 (a proper rotation). Momenta and the noisy sample are rotated into this frame, the network
predicts there, and the output is rotated back. Rotating the whole event (momenta and sample) by
any Q therefore rotates the output by Q: the map is SO(3)-equivariant by construction, the
network need not learn rotations and no capacity is spent on them, while the output stays in the
detector frame, so targets need no alignment. Where the frame is ill-defined (degenerate
eigenvalues or a vanishing third moment, i.e. symmetric momentum patterns such as CH4 in the laser
regime), the frame is still a deterministic function of the momenta but not equivariant; the data
builder's random rotations make the network see such events in many orientations. The frame is
computed without gradients (it depends on the conditioning only).

Modes: `deterministic=False` (diffusion): forward(sample, timestep, ...) returns a (B, A, 3) tensor
whose meaning (x0, velocity, EDM F) the training objective decides. `deterministic=True`
(regressor baseline, same backbone): sample and timestep are ignored and the output is the geometry.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from diffpipe.tasks.registry import implements


def momentum_frame(momenta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Proper rotation (B, 3, 3) whose columns are the sign-fixed principal axes of the momentum tensor."""
    with torch.no_grad():
        p = momenta.double() * mask[..., None]
        tensor = p.transpose(1, 2) @ p
        _, axes = torch.linalg.eigh(tensor)
        axes = axes.flip(-1)
        third = ((p @ axes) ** 3).sum(1)
        axes = axes * torch.where(third < 0, -1.0, 1.0)[:, None, :]
        axes[:, :, 2] = torch.linalg.cross(axes[:, :, 0], axes[:, :, 1])
    return axes.to(momenta.dtype)


def timestep_embedding(timestep: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of timesteps (B,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timestep.device) / half)
    angles = timestep.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class SinusoidalProjection(nn.Module):
    """`timestep_embedding` as a module, with a `scale` multiplying the timestep (like diffusers' Timesteps)."""

    def __init__(self, num_channels: int, scale: float = 1.0):
        super().__init__()
        self.num_channels, self.scale = num_channels, scale

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features (B, num_channels) of scale * timestep."""
        return timestep_embedding(timestep * self.scale, self.num_channels)


class AtomBlock(nn.Module):
    """Pre-norm transformer block over atoms with adaLN modulation and an additive attention bias."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.explicit_attention = False
        """Attention as softmax(q k^T / sqrt(d) + bias) v instead of the fused kernel (which has no forward AD)."""

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """tokens (B, A, W), cond (B, W), bias (B, H, A, A) with -inf on padding keys."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None].chunk(6, dim=-1)
        b, a, w = tokens.shape
        h = self.norm1(tokens) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(b, a, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if self.explicit_attention:
            weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias, dim=-1)
            attended = weights @ v
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        tokens = tokens + (1 + gate1) * self.proj(attended.transpose(1, 2).reshape(b, a, w))
        h = self.norm2(tokens) * (1 + scale2) + shift2
        return tokens + (1 + gate2) * self.mlp(h)


@implements("arch", "atom_transformer")
class AtomTransformer(ModelMixin, ConfigMixin):
    """Transformer over the ions of a Coulomb explosion event: denoises (or regresses) atom coordinates."""

    time_embedding_module = "time_mlp"
    """The module a two-time wrapper adds its gap embedding to (see nets/flowmap.py)."""

    @register_to_config
    def __init__(self, width: int = 128, depth: int = 4, heads: int = 4, max_atomic_number: int = 54,
                 max_charge: int = 20, momentum_scale_au: float = 100.0, coordinate_scale_bohr: float = 1.0,
                 deterministic: bool = False, use_momentum_frame: bool = True):
        super().__init__()
        self.element_embedding = nn.Embedding(max_atomic_number + 1, width)
        self.charge_embedding = nn.Embedding(max_charge + 1, width)
        self.momentum_in = nn.Linear(4, width)
        self.sample_in = None if deterministic else nn.Linear(3, width)
        self.time_proj = None if deterministic else SinusoidalProjection(width)
        self.time_mlp = None if deterministic else nn.Sequential(
            nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        pair_features = 3 if deterministic else 4
        self.pair_bias = nn.Sequential(nn.Linear(pair_features, width), nn.SiLU(), nn.Linear(width, heads))
        self.blocks = nn.ModuleList(AtomBlock(width, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.out = nn.Linear(width, 3)

    def forward(self, sample: torch.Tensor | None, timestep: torch.Tensor | None, elements: torch.Tensor,
                charges: torch.Tensor, momenta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, A, 3) output in the input (detector) frame; padding atoms get 0.

        sample (B, A, 3) noisy coordinates (ignored if deterministic), timestep (B,) any scale suited to a
        sinusoidal embedding with period up to 1e4 (e.g. 1000 t), elements (B, A) atomic numbers,
        charges (B, A) in e, momenta (B, A, 3) in a.u., mask (B, A) bool for real atoms.
        """
        mask = mask.bool()
        frame = momentum_frame(momenta, mask) if self.config.use_momentum_frame else None
        p = self._to_frame(momenta, frame) / self.config.momentum_scale_au
        x = None
        if not self.config.deterministic:
            x = self._to_frame(sample, frame) / self.config.coordinate_scale_bohr
        tokens = (self.element_embedding(elements.long().clamp(0, self.config.max_atomic_number))
                  + self.charge_embedding(charges.round().long().clamp(0, self.config.max_charge))
                  + self.momentum_in(torch.cat([p, torch.log1p(p.norm(dim=-1, keepdim=True))], dim=-1)))
        if x is not None:
            tokens = tokens + self.sample_in(x)
            cond = self.time_mlp(self.time_proj(timestep).to(tokens.dtype))
        else:
            cond = torch.zeros(tokens.shape[0], tokens.shape[-1], dtype=tokens.dtype, device=tokens.device)
        bias = self._attention_bias(p, x, mask)
        for block in self.blocks:
            tokens = block(tokens, cond, bias)
        out = self.out(self.norm_out(tokens)) * self.config.coordinate_scale_bohr
        return self._from_frame(out, frame) * mask[..., None]

    def _attention_bias(self, p: torch.Tensor, x: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """Per-head bias (B, H, A, A) from momentum pairs (and noisy distances), -inf on padding keys."""
        norms = p.norm(dim=-1)
        cosine = (p @ p.transpose(1, 2)) / (norms[:, :, None] * norms[:, None, :]).clamp_min(1e-6)
        log_norm = torch.log1p(norms)
        features = [cosine, log_norm[:, :, None].expand_as(cosine), log_norm[:, None, :].expand_as(cosine)]
        if x is not None:
            features.append((x[:, :, None] - x[:, None, :]).norm(dim=-1))
        bias = self.pair_bias(torch.stack(features, dim=-1)).permute(0, 3, 1, 2)
        return bias.masked_fill(~mask[:, None, None, :], float("-inf"))

    @staticmethod
    def _to_frame(vectors: torch.Tensor, frame: torch.Tensor | None) -> torch.Tensor:
        """Coordinates of vectors (B, A, 3) along the frame axes."""
        return vectors if frame is None else vectors @ frame

    @staticmethod
    def _from_frame(vectors: torch.Tensor, frame: torch.Tensor | None) -> torch.Tensor:
        """Vectors given in frame coordinates back in the input frame."""
        return vectors if frame is None else vectors @ frame.transpose(1, 2)



def atom_regressor(**config) -> AtomTransformer:
    """Deterministic baseline: the same backbone regressing coordinates from (element, charge, momentum)."""
    return AtomTransformer(**{**config, "deterministic": True})

"""Two-time (r, t) networks for flow maps, built from one-time diffusers-style models.

`FlowMapNet` wraps a one-time model (diffusers `UNet2DModel`, or the small `VelocityMLP` for 2-D toys)
and feeds the second time through the model's class-embedding slot: the slot is replaced by the sum of
the original label embedding (if any) and a new embedding of the gap 1000 (t - r), built from the
model's own sinusoidal projection and initialised to zero. So a student made with
`FlowMapNet.from_teacher(teacher)` computes exactly the teacher at every (r, t) until it trains.
Times are internal (t = 0 is data, timeconv); the base model sees the diffusers value 1000 t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from diffpipe.errors import SpecError
from diffpipe.tasks import timeconv

from . import register_model


@register_model
class VelocityMLP(ModelMixin, ConfigMixin):
    """One-time MLP for low-dimensional data, called like a UNet: (sample, timestep, class_labels).

    `time_scale` multiplies the diffusers timestep (1000 t) inside the sinusoidal embedding. diffusers'
    own value 1 puts frequencies up to 1000 rad per unit t into the features; their t-derivatives swamp
    the MeanFlow JVP target (1-step MMD^2 on the ring stalls near 0.3-0.8 vs 0.07 with 0.01, 1500 steps).
    """

    @register_to_config
    def __init__(self, data_dim: int = 2, hidden: int = 256, depth: int = 3, time_channels: int = 64,
                 num_class_embeds: int | None = None, time_scale: float = 0.01):
        super().__init__()
        self.time_proj = Timesteps(time_channels, flip_sin_to_cos=True, downscale_freq_shift=0,
                                   scale=time_scale)
        self.time_embedding = TimestepEmbedding(time_channels, hidden)
        self.class_embedding = nn.Embedding(num_class_embeds, hidden) if num_class_embeds else None
        widths = [data_dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.out = nn.Linear(hidden, data_dim)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Network output for a batch (rows) at per-sample or scalar diffusers timesteps."""
        timestep = timestep * torch.ones(sample.shape[0], dtype=timestep.dtype, device=sample.device)
        emb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels)
        h = sample
        for layer in self.layers:
            h = F.silu(layer(h) + emb)
        return self.out(h)


class GapEmbedding(nn.Module):
    """Label embedding (if any) plus a zero-initialised embedding of the diffusers gap value 1000 (t - r)."""

    def __init__(self, time_proj: nn.Module, proj_channels: int, embed_dim: int, labels: nn.Module | None):
        super().__init__()
        self.time_proj = time_proj
        self.gap = TimestepEmbedding(proj_channels, embed_dim)
        nn.init.zeros_(self.gap.linear_2.weight)
        nn.init.zeros_(self.gap.linear_2.bias)
        self.labels = labels

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        """Embedding of packed rows (label, gap timestep); the label column is ignored without labels."""
        emb = self.gap(self.time_proj(packed[:, 1]).to(self.gap.linear_1.weight.dtype))
        if self.labels is not None:
            emb = emb + self.labels(packed[:, 0].long())
        return emb


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def enable_forward_ad(model: nn.Module) -> None:
    """Make a diffusers model usable under torch.func.jvp on CPU and GPU.

    Forward-mode AD is not implemented for PyTorch's fused attention kernels, and group_norm's
    forward-mode formula fails on non-contiguous inputs (after attention's transposes); so attention
    runs through diffusers' classic `AttnProcessor` and group norms get contiguous inputs.
    """
    for m in model.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor())
        if isinstance(m, nn.GroupNorm):
            m.register_forward_pre_hook(_contiguous_input)


BASE_MODELS: dict[str, type[ModelMixin]] = {"UNet2DModel": UNet2DModel, "VelocityMLP": VelocityMLP}
"""One-time model classes a FlowMapNet can wrap."""


@register_model
class FlowMapNet(ModelMixin, ConfigMixin):
    """Two-time wrapper: u(x_t, r, t, labels) = base(x_t, 1000 t, labels & gap 1000 (t - r)).

    `time_scale` (None: the base's own) multiplies 1000 t and 1000 (t - r) inside the shared sinusoidal
    projection. diffusers UNets use 1, i.e. frequencies up to 1000 rad per unit t; at random init their
    t-derivative swamps the MeanFlow target (digits UNet, 300 JVP steps: MeanFlow error ~6e4 with 1 vs ~45
    with 0.01). A teacher-initialised student must keep the teacher's scale to compute the teacher.
    """

    @register_to_config
    def __init__(self, base_class: str = "VelocityMLP", base_config: dict | None = None,
                 time_scale: float | None = None):
        super().__init__()
        if base_class not in BASE_MODELS:
            raise SpecError("model.base_class", "no two-time wrapper for this model class",
                            expected=" or ".join(BASE_MODELS), found=base_class)
        self.base = BASE_MODELS[base_class].from_config(base_config or {})
        if getattr(self.base.config, "class_embed_type", None) is not None:
            raise SpecError("model.class_embed_type", "the gap embedding needs the plain label slot",
                            expected="None", found=str(self.base.config.class_embed_type))
        if time_scale is not None:
            self.base.time_proj.scale = time_scale
        time_embedding = self.base.time_embedding
        self.base.class_embedding = GapEmbedding(
            self.base.time_proj, time_embedding.linear_1.in_features, time_embedding.linear_2.out_features,
            self.base.class_embedding,
        )
        enable_forward_ad(self.base)

    def forward(self, sample: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean velocity u over [r, t] (internal times, per sample or scalar) for a batch."""
        n = sample.shape[0]
        t = t * torch.ones(n, dtype=t.dtype, device=sample.device)
        gap = timeconv.diffusers_timestep_from_t(t - r)
        labels = torch.zeros_like(t) if class_labels is None else class_labels.to(t.dtype)
        packed = torch.stack([labels, gap], dim=1)
        out = self.base(sample, timeconv.diffusers_timestep_from_t(t), class_labels=packed)
        return getattr(out, "sample", out)

    @classmethod
    def from_teacher(cls, teacher: ModelMixin, time_scale: float | None = None) -> FlowMapNet:
        """A student equal to the one-time `teacher` at every (r, t): its weights, zero gap embedding.

        A `time_scale` other than None changes the function: use it only to wrap random weights.
        """
        config = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
        student = cls(base_class=type(teacher).__name__, base_config=config, time_scale=time_scale)
        labels = "class_embedding."
        state = {k.replace(labels, labels + "labels.", 1) if k.startswith(labels) else k: v
                 for k, v in teacher.state_dict().items()}
        missing, unexpected = student.base.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("class_embedding.gap.") for k in missing):
            raise SpecError("init", "teacher weights do not fit the student", expected="same architecture",
                            found=f"missing {missing}, unexpected {unexpected}")
        student = student.to(teacher.device)
        return student if student.dtype == teacher.dtype else student.to(teacher.dtype)


def one_time_velocity(model: ModelMixin):
    """VelocityFn (x_t, t, cond) -> v of a one-time model trained with the flow-matching objective."""

    def velocity(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = model(x, timeconv.diffusers_timestep_from_t(t), class_labels=cond)
        return getattr(out, "sample", out)

    return velocity

"""Two-time (r, t) networks for flow maps, built from one-time diffusers-style models.

`FlowMapNet` wraps a one-time model (any diffusers or diffpipe model with a sinusoidal `time_proj` and a
time-embedding module: a diffusers `UNet2DModel`, a domain's own network, the small `VelocityMLP` for
2-D toys) and feeds the second time in beside the first: the
base's time-embedding module gets an added embedding of the gap 1000 (t - r), built from the model's own
sinusoidal projection and initialised to zero. So a student made with `FlowMapNet.from_teacher(teacher)`
computes exactly the teacher at every (r, t) until it trains, and the base's other inputs (class labels,
the climate year embedding, the atoms of an event) keep their meaning. Times are internal (t = 0 is
data, timeconv); the base model sees the diffusers value 1000 t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from diffpipe.errors import SpecError
from diffpipe.tasks import timeconv

from . import model_class


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


class GapConditionedTime(nn.Module):
    """A base network's time-embedding module plus a zero-initialised embedding of the gap 1000 (t - r).

    The gap is featurised by the base's own sinusoidal projection (`time_proj`) and is handed in by
    `FlowMapNet` for the duration of one base call (`pending_gap`), so the base runs unchanged.
    """

    def __init__(self, time_module: nn.Module, time_proj: nn.Module, proj_channels: int):
        super().__init__()
        self.time = time_module
        self.time_proj = [time_proj]  # a list: the projection is the base's module, not a child of this one
        embed_dim = time_module(torch.zeros(1, proj_channels)).shape[-1]
        self.gap = TimestepEmbedding(proj_channels, embed_dim)
        nn.init.zeros_(self.gap.linear_2.weight)
        nn.init.zeros_(self.gap.linear_2.bias)
        self.pending_gap: torch.Tensor | None = None

    def forward(self, features: torch.Tensor, *args: object) -> torch.Tensor:
        """Time embedding of `features` plus the embedding of the pending gap (B,)."""
        if self.pending_gap is None:
            raise RuntimeError("a FlowMapNet base was called without its gap (call the FlowMapNet)")
        emb = self.time(features, *args)
        return emb + self.gap(self.time_proj[0](self.pending_gap).to(emb.dtype))


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


class ForwardADAttnProcessor:
    """diffusers' classic self-attention with the scores as a plain matmul.

    `Attention.get_attention_scores` uses `baddbmm`, which crashes the interpreter under `torch.func.jvp`
    while torch's FlopCounterMode is active (torch 2.13, CPU); matmul and softmax have forward-AD formulas.
    Covers what the UNets here use: self-attention with group norm, residual and output rescaling.
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over the spatial positions of (B, C, H, W) or the tokens of (B, N, C) inputs."""
        if encoder_hidden_states is not None or attention_mask is not None or attn.spatial_norm is not None:
            raise NotImplementedError("forward-AD attention covers plain self-attention only")
        residual, shape = hidden_states, hidden_states.shape
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = (attn.head_to_batch_dim(proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        probs = torch.softmax(torch.matmul(query, key.transpose(-1, -2)) * attn.scale, dim=-1)
        hidden_states = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.matmul(probs, value))))
        if len(shape) == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def enable_forward_ad(model: nn.Module) -> None:
    """Make a diffusers model usable under torch.func.jvp on CPU and GPU.

    Forward-mode AD is not implemented for PyTorch's fused attention kernels, and group_norm's
    forward-mode formula fails on non-contiguous inputs (after attention's transposes); so attention
    runs through `ForwardADAttnProcessor` (the atom transformer's through its explicit softmax) and
    group norms get contiguous inputs.
    """
    for m in model.modules():
        if isinstance(m, Attention):
            m.set_processor(ForwardADAttnProcessor())
        if hasattr(m, "explicit_attention"):  # blocks with their own attention (the atom transformer's)
            m.explicit_attention = True
        if isinstance(m, nn.GroupNorm):
            m.register_forward_pre_hook(_contiguous_input)


def time_module_name(base_class: type[ModelMixin]) -> str:
    """The module of a one-time model that turns `time_proj` features into its time-conditioning vector.

    `time_embedding` (diffusers UNets, VelocityMLP) unless the class names another in `time_embedding_module`.
    """
    return getattr(base_class, "time_embedding_module", "time_embedding")


BaseCall = Callable[[ModelMixin, torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""call(base, x, diffusers_timestep (B,), cond) -> network output: how a domain runs its one-time network."""


def call_with_labels(base: ModelMixin, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
    """The default BaseCall: `base(x, timestep, class_labels=cond)` (diffusers UNets, VelocityMLP)."""
    out = base(x, timestep, class_labels=cond)
    return getattr(out, "sample", out)


class FlowMapNet(ModelMixin, ConfigMixin):
    """Two-time wrapper: u(x_t, r, t, cond) = base(x_t, 1000 t, cond) with the gap 1000 (t - r) embedded.

    The gap embedding is added to the output of the base's time-embedding module (`time_module_name`), so
    every other input slot (class labels, the climate year, the atoms of an event) keeps its meaning. How
    the base is called with `cond` is the domain's `BaseCall` (`bind`; default `call_with_labels`).

    `time_scale` (None: the base's own) multiplies 1000 t and 1000 (t - r) inside the shared sinusoidal
    projection. diffusers UNets use 1, i.e. frequencies up to 1000 rad per unit t; at random init their
    t-derivative swamps the MeanFlow target (digits UNet, 300 JVP steps: MeanFlow error ~6e4 with 1 vs ~45
    with 0.01). A teacher-initialised student must keep the teacher's scale to compute the teacher.
    """

    @register_to_config
    def __init__(self, base_class: str = "VelocityMLP", base_config: dict | None = None,
                 time_scale: float | None = None):
        super().__init__()
        try:
            cls = model_class(base_class)
        except ValueError:
            raise SpecError("model.base_class", "no such model class", expected="a diffusers or diffpipe model",
                            found=base_class) from None
        self.base = cls.from_config(base_config or {})
        if getattr(self.base, "time_proj", None) is None:
            raise SpecError("model.base_class", "a two-time network needs a noise-time input",
                            expected="a diffusion model with a sinusoidal `time_proj`",
                            found=f"{base_class} without one (a deterministic regressor, or time embedded elsewhere)")
        if time_scale is not None:
            self.base.time_proj.scale = time_scale
        name = time_module_name(cls)
        if not isinstance(getattr(self.base, name, None), nn.Module):
            raise SpecError("model.base_class", "a two-time wrapper adds the gap to the time embedding",
                            expected=f"a model with a `{name}` module", found=base_class)
        channels = self.base.time_proj(torch.zeros(1)).shape[-1]
        setattr(self.base, name, GapConditionedTime(getattr(self.base, name), self.base.time_proj, channels))
        enable_forward_ad(self.base)
        self.call_base: BaseCall = call_with_labels

    @property
    def gap_slot(self) -> GapConditionedTime:
        """The time-embedding module that carries the gap embedding."""
        return getattr(self.base, time_module_name(type(self.base)))

    def bind(self, call: BaseCall) -> FlowMapNet:
        """Run the base through the domain's `call` from now on (not saved: domains bind on load)."""
        self.call_base = call
        return self

    def forward(self, sample: torch.Tensor, r: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Mean velocity u over [r, t] (internal times, per sample or scalar) for a batch."""
        t = t * torch.ones(sample.shape[0], dtype=t.dtype, device=sample.device)
        slot = self.gap_slot
        slot.pending_gap = timeconv.diffusers_timestep_from_t(t - r)
        try:
            return self.call_base(self.base, sample, timeconv.diffusers_timestep_from_t(t), cond)
        finally:
            slot.pending_gap = None

    @classmethod
    def from_teacher(cls, teacher: ModelMixin, time_scale: float | None = None) -> FlowMapNet:
        """A student equal to the one-time `teacher` at every (r, t): its weights, zero gap embedding.

        A `time_scale` other than None changes the function: use it only to wrap random weights.
        """
        config = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
        student = cls(base_class=type(teacher).__name__, base_config=config, time_scale=time_scale)
        slot = time_module_name(type(teacher)) + "."
        state = {k.replace(slot, slot + "time.", 1) if k.startswith(slot) else k: v
                 for k, v in teacher.state_dict().items()}
        missing, unexpected = student.base.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(slot + "gap.") for k in missing):
            raise SpecError("init", "teacher weights do not fit the student", expected="same architecture",
                            found=f"missing {missing}, unexpected {unexpected}")
        student = student.to(teacher.device)
        return student if student.dtype == teacher.dtype else student.to(teacher.dtype)


def network_fn(model: ModelMixin, call: BaseCall = call_with_labels) -> Callable[..., torch.Tensor]:
    """A domain's NetFn `net(x, timestep, cond)` for a one-time model or a FlowMapNet.

    For a FlowMapNet (bound to `call`), `timestep` is a (B, 2) tensor of diffusers pairs (1000 t, 1000 r),
    as the two-time samplers pass; for a one-time model it is (B,) or a scalar.
    """
    if not isinstance(model, FlowMapNet):
        def one_time(x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
            return call(model, x, timestep.expand(x.shape[0]) if timestep.dim() == 0 else timestep, cond)

        return one_time
    model.bind(call)

    def two_time(x: torch.Tensor, pairs: torch.Tensor, cond: Any) -> torch.Tensor:
        t, r = (timeconv.t_from_diffusers_timestep(col) for col in pairs.unbind(1))
        return model(x, r, t, cond)

    return two_time


def one_time_velocity(model: ModelMixin):
    """VelocityFn (x_t, t, cond) -> v of a one-time model trained with the flow-matching objective."""

    def velocity(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = model(x, timeconv.diffusers_timestep_from_t(t), class_labels=cond)
        return getattr(out, "sample", out)

    return velocity

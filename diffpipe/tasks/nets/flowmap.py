"""Two-time (r, t) networks for flow maps, built from one-time diffusers-style models.

`FlowMapNet` wraps a one-time model (any diffusers or diffpipe model with a sinusoidal `time_proj` and a
time-embedding module: a diffusers `UNet2DModel`, a domain's own network, the small `VelocityMLP` for
2-D toys) and feeds the second time in beside the first: the base's time-embedding module gets an added
embedding of the gap 1000 (t - r), built from the model's own sinusoidal projection and initialised to
zero. So a student made with `FlowMapNet.from_teacher(teacher)` computes exactly the teacher at every
(r, t) until it trains, and the base's other inputs (class labels, the climate year embedding, the atoms
of an event) keep their meaning. Both times are explicit arguments of every call, the wrapper holds no
state between calls, and `save_pretrained` / `from_pretrained` round-trip it whole. Model inputs are
diffusers times 1000 t (internal t: t = 0 is data, timeconv).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ..objectives import NetFn


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


class TwoTimeProjection(nn.Module):
    """A base network's sinusoidal projection applied to both rows of a two-time input (2, B).

    Row 0 is the diffusers time 1000 t, row 1 the gap 1000 (t - r); the features are concatenated (B, 2C)
    for `TwoTimeEmbedding`. A one-row input (B,) (a diffusers UNet's `class_embed_type="timestep"` year)
    gets the base's own projection (B, C), so that slot keeps its meaning.
    """

    def __init__(self, proj: nn.Module):
        super().__init__()
        self.proj = proj

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        """Features (B, 2C) of a (2, B) time-and-gap input, or (B, C) of a (B,) input."""
        if timestep.dim() == 2:
            return torch.cat([self.proj(timestep[0]), self.proj(timestep[1])], dim=-1)
        return self.proj(timestep)


class TwoTimeEmbedding(nn.Module):
    """A base network's time-embedding module on the time features, plus a zero-initialised embedding of the gap.

    Takes the (B, 2C) features of `TwoTimeProjection`: the first C go through the base's module unchanged,
    the last C (the gap 1000 (t - r)) through `gap`, whose output layer starts at zero.
    """

    def __init__(self, time_module: nn.Module, proj_channels: int):
        super().__init__()
        self.time = time_module
        self.channels = proj_channels
        embed_dim = time_module(torch.zeros(1, proj_channels)).shape[-1]
        self.gap = TimestepEmbedding(proj_channels, embed_dim)
        nn.init.zeros_(self.gap.linear_2.weight)
        nn.init.zeros_(self.gap.linear_2.bias)

    def forward(self, features: torch.Tensor, *args: object) -> torch.Tensor:
        """Embedding of the time features plus the embedding of the gap features."""
        emb = self.time(features[..., :self.channels], *args)
        return emb + self.gap(features[..., self.channels:].to(emb.dtype))


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
"""call(base, x, timestep, cond) -> network output: how a domain runs its one-time network at (B,) timesteps.

A FlowMapNet's base is run the same way, with the (2, B) input of `FlowMapNet.base_timestep` as timestep."""


def call_with_labels(base: ModelMixin, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
    """The default BaseCall: `base(x, timestep, class_labels=cond)` (diffusers UNets, VelocityMLP)."""
    out = base(x, timestep, class_labels=cond)
    return getattr(out, "sample", out)


class FlowMapNet(ModelMixin, ConfigMixin):
    """Two-time wrapper: u(x_t, r, t, cond) = base(x_t, (1000 t, 1000 (t - r)), cond) with the gap embedded.

    The base's sinusoidal projection is applied to both times (`TwoTimeProjection`) and the gap's
    embedding is added to the output of its time-embedding module (`time_module_name`, `TwoTimeEmbedding`),
    so every other input slot (class labels, the climate year, the atoms of an event) keeps its meaning.
    The two times travel through the base's own forward as its timestep argument, one (2, B) tensor (the
    bases here broadcast their timestep against (B,) and hand it to `time_proj` unchanged), so nothing is
    stored between calls and a loaded checkpoint is complete. `forward(sample, timestep, r_timestep,
    *args, **kwargs)` passes the other arguments to the base as the base takes them.

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
        kind = getattr(self.base.config, "time_embedding_type", "positional")
        if kind != "positional":
            raise SpecError("model.base_class", "a two-time network embeds its times sinusoidally",
                            expected="time_embedding_type 'positional'", found=repr(kind))
        if time_scale is not None:
            self.base.time_proj.scale = time_scale
        name = time_module_name(cls)
        if not isinstance(getattr(self.base, name, None), nn.Module):
            raise SpecError("model.base_class", "a two-time wrapper adds the gap to the time embedding",
                            expected=f"a model with a `{name}` module", found=base_class)
        channels = self.base.time_proj(torch.zeros(1)).shape[-1]
        self.base.time_proj = TwoTimeProjection(self.base.time_proj)
        setattr(self.base, name, TwoTimeEmbedding(getattr(self.base, name), channels))
        enable_forward_ad(self.base)

    @property
    def gap_embedding(self) -> TimestepEmbedding:
        """The embedding of the gap 1000 (t - r) (its output is zero until it trains)."""
        return getattr(self.base, time_module_name(type(self.base))).gap

    @staticmethod
    def base_timestep(timestep: torch.Tensor, r_timestep: torch.Tensor) -> torch.Tensor:
        """The (2, B) timestep input of the wrapped base: rows 1000 t and the gap 1000 (t - r)."""
        r_timestep = r_timestep.to(timestep) * torch.ones_like(timestep)
        return torch.stack([timestep, timestep - r_timestep])

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, r_timestep: torch.Tensor, *args: Any,
                **kwargs: Any) -> Any:
        """The base's output (as the base returns it) for the jump from diffusers time `timestep` to `r_timestep`.

        Both times per sample (B,) or scalar; `args` / `kwargs` are the base's own conditioning inputs.
        """
        timestep = timestep * torch.ones(sample.shape[0], dtype=timestep.dtype, device=sample.device)
        return self.base(sample, self.base_timestep(timestep, r_timestep), *args, **kwargs)

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


def network_fn(model: ModelMixin, call: BaseCall = call_with_labels) -> NetFn:
    """A domain's NetFn `net(x, timestep, cond, r_timestep=None)` for a one-time model or a FlowMapNet.

    Timesteps are diffusers values, per sample (B,) or scalar. A FlowMapNet gives its mean velocity over
    the jump to `r_timestep` (None: r = t, its instantaneous velocity); a one-time model has one velocity
    whatever the jump and ignores `r_timestep`.
    """
    if not isinstance(model, FlowMapNet):
        def one_time(x: torch.Tensor, timestep: torch.Tensor, cond: Any,
                     r_timestep: torch.Tensor | None = None) -> torch.Tensor:
            return call(model, x, timestep.expand(x.shape[0]) if timestep.dim() == 0 else timestep, cond)

        return one_time

    def two_time(x: torch.Tensor, timestep: torch.Tensor, cond: Any,
                 r_timestep: torch.Tensor | None = None) -> torch.Tensor:
        timestep = timestep * torch.ones(x.shape[0], dtype=timestep.dtype, device=x.device)
        return call(model.base, x, model.base_timestep(timestep, timestep if r_timestep is None else r_timestep),
                    cond)

    return two_time


class TwoTimeCall(nn.Module):
    """A FlowMapNet as the flow-map losses call it: `net(x_t, r, t, cond)` in internal times (timeconv).

    `call` is the domain's way of running the base (`BaseCall`). The FlowMapNet is this module's only
    child, so a loss's frozen copy (`copy.deepcopy`) and its parameter sweeps see the student's weights.
    """

    def __init__(self, model: FlowMapNet, call: BaseCall = call_with_labels):
        super().__init__()
        self.model = model
        self.call = call

    def forward(self, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Mean velocity u over [r, t] (internal times, per sample or scalar)."""
        net = network_fn(self.model, self.call)  # per call: a deep copy of this module must run its own model
        return net(x, timeconv.diffusers_timestep_from_t(t), cond, timeconv.diffusers_timestep_from_t(r))


def one_time_velocity(model: ModelMixin):
    """VelocityFn (x_t, t, cond) -> v of a one-time model trained with the flow-matching objective."""

    def velocity(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = model(x, timeconv.diffusers_timestep_from_t(t), class_labels=cond)
        return getattr(out, "sample", out)

    return velocity

"""Training objectives of continuous diffusion models: a union on `kind`.

Every objective is trained and sampled in its own convention and converted to the internal one
(flow matching, t = 0 is data) only at the edges; see `diffpipe.tasks.timeconv`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .base import Strict
from .reasoning import MaskedDiffusion


class FlowMatching(Strict):
    """Rectified flow: x_t = (1-t) x + t eps, the net predicts the velocity eps - x."""

    kind: Literal["flow_matching"] = "flow_matching"
    time_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    """Distribution of t during training (SD3 uses logit-normal)."""
    logit_mean: float = 0.0
    """Mean of the normal before the sigmoid (logit-normal sampling)."""
    logit_std: float = 1.0
    """Std of the normal before the sigmoid (logit-normal sampling)."""
    default_scheduler: ClassVar[str] = "FlowMatchEulerDiscreteScheduler"
    schedulers: ClassVar[frozenset[str]] = frozenset(
        {"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
         "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"}
    )


class DDPM(Strict):
    """Discrete-time VP diffusion (DDPM) with epsilon- or v-prediction."""

    kind: Literal["ddpm"] = "ddpm"
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the network predicts."""
    num_train_timesteps: int = Field(default=1000, ge=2)
    """Number of discrete noise levels."""
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    """Noise schedule (diffusers names)."""
    min_snr_gamma: float | None = Field(default=5.0, gt=0.0)
    """Min-SNR loss weighting gamma (None: unweighted)."""
    default_scheduler: ClassVar[str] = "DDIMScheduler"
    schedulers: ClassVar[frozenset[str]] = frozenset(
        {"DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
         "UniPCMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
         "HeunDiscreteScheduler", "DEISMultistepScheduler", "PNDMScheduler", "LMSDiscreteScheduler"}
    )


class EDM(Strict):
    """EDM (Karras et al. 2022): preconditioned denoiser, log-normal noise levels."""

    kind: Literal["edm"] = "edm"
    p_mean: float = -1.2
    """Mean of ln(sigma) during training."""
    p_std: float = 1.2
    """Std of ln(sigma) during training."""
    sigma_data: float = Field(default=0.5, gt=0.0)
    """Data standard deviation assumed by the preconditioning."""
    sigma_min: float = Field(default=0.002, gt=0.0)
    """Smallest noise level of the sampler."""
    sigma_max: float = Field(default=80.0, gt=0.0)
    """Largest noise level of the sampler."""
    default_scheduler: ClassVar[str] = "EDMEulerScheduler"
    schedulers: ClassVar[frozenset[str]] = frozenset({"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"})


class Regression(Strict):
    """Deterministic baseline with the same network: predicts x0 from the condition in one call (no noise)."""

    kind: Literal["regression"] = "regression"
    default_scheduler: ClassVar[str | None] = None
    schedulers: ClassVar[frozenset[str]] = frozenset()


Objective = Annotated[FlowMatching | DDPM | EDM | Regression | MaskedDiffusion, Field(discriminator="kind")]

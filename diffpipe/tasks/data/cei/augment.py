"""Random rotations of events, and detector effects applied at training time (never baked into a store)."""

from __future__ import annotations

import torch


def random_rotations(n: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n rotation matrices (n, 3, 3), uniform on SO(3) (normalised Gaussian quaternions)."""
    quat = torch.randn(n, 4, generator=generator, dtype=dtype)
    w, x, y, z = (quat / quat.norm(dim=1, keepdim=True)).unbind(1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def rotate(vectors: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Apply one rotation per event: vectors (B, A, 3), rotations (B, 3, 3) -> R v for every atom."""
    return vectors @ rotations.transpose(1, 2).to(vectors.dtype)


def smear_momenta(momenta: torch.Tensor, mask: torch.Tensor, relative_sigma: float = 0.0,
                  absolute_sigma_au: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Detector momentum resolution: add N(0, (relative_sigma |p|)^2 + absolute_sigma_au^2) per component."""
    sigma = ((relative_sigma * momenta.norm(dim=-1, keepdim=True)) ** 2 + absolute_sigma_au ** 2).sqrt()
    noise = torch.randn(momenta.shape, generator=generator, dtype=momenta.dtype, device=momenta.device)
    return (momenta + sigma * noise) * mask[..., None]


def drop_ions(mask: torch.Tensor, loss_probability: float, min_detected: int = 2,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Finite detection efficiency: each real ion is missed with `loss_probability`.

    Returns the mask of detected ions (B, A). Events left with fewer than `min_detected` ions keep their
    full mask (a real experiment would not record them as a coincidence event at all).
    """
    keep = torch.rand(mask.shape, generator=generator, device=mask.device) >= loss_probability
    detected = mask & keep
    too_few = detected.sum(1, keepdim=True) < min_detected
    return torch.where(too_few, mask, detected)

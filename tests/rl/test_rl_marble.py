"""MARBLE: min-norm weights against the two-gradient closed form; the balanced update conflicts with no reward."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from diffpipe.tasks.rl.continuous import balance, min_norm_weights  # noqa: E402


def closed_form_alpha(g1: torch.Tensor, g2: torch.Tensor) -> float:
    """Weight of g1 in the min-norm point of the segment [g1, g2]: clip((g2 - g1) . g2 / |g1 - g2|^2, 0, 1)."""
    return float(((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))).clamp(0, 1))


@pytest.mark.parametrize("seed", range(6))
def test_min_norm_matches_closed_form_for_two_gradients(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    g[1] *= 0.2 + 3 * torch.rand(1, generator=gen, dtype=torch.float64)
    alpha = min_norm_weights(g @ g.T)
    assert alpha.sum().item() == pytest.approx(1.0)
    assert alpha[0].item() == pytest.approx(closed_form_alpha(g[0], g[1]), abs=1e-9)


def test_min_norm_of_three_gradients_is_a_stationary_point() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.8, -0.5]], dtype=torch.float64)
    alpha = min_norm_weights(g @ g.T, iterations=2000)
    d = alpha @ g
    # optimality on the simplex: every gradient with positive weight has d . g_k = min_k d . g_k = |d|^2
    products = g @ d
    assert products.min().item() == pytest.approx((d @ d).item(), abs=1e-3)
    assert (d @ d).item() < min((g @ g.T).diag()).item()


def test_balanced_update_has_no_negative_cosine_and_the_loss_gives_its_direction() -> None:
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.5]))
    targets = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.4, 0.0]])  # conflicting rewards
    losses = ((w - targets) ** 2).sum(1) * torch.tensor([1.0, 5.0])
    out = balance(losses, [w], previous_alpha=None, alpha_ema=0.0, normalize=True)
    grads = torch.stack([torch.autograd.grad(l, w, retain_graph=True)[0] for l in losses])
    unit = grads / grads.norm(dim=1, keepdim=True)
    expected = out.alpha @ unit
    assert out.min_cosine >= -1e-6 and (unit @ expected >= -1e-6).all()
    torch.testing.assert_close(torch.autograd.grad(out.loss, w, retain_graph=True)[0], expected)
    smoothed = balance(losses, [w], previous_alpha=torch.tensor([1.0, 0.0]), alpha_ema=0.5, normalize=True)
    torch.testing.assert_close(smoothed.alpha, 0.5 * torch.tensor([1.0, 0.0]) + 0.5 * out.alpha)

"""Sampler metrics: log Z and ESS from importance weights, distances to ground truth, modes, particle and
lattice observables, and their plots.

log Z hat = logsumexp(log w) - log n (biased low in log), ELBO = mean log w (<= log Z), normalised
ESS = (sum w)^2 / (n sum w^2). Mode coverage counts the modes holding at least 10% of their fair share
(n / K) of the samples, each sample assigned to its nearest mode; for the mixture, `modes_resolved`
counts only samples inside their mode's 99% ball, and `fraction_in_modes` is the share of such samples
(0.99 for exact samples), since a diffuse sampler's samples also have a nearest mode.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from scipy.stats import wasserstein_distance  # noqa: E402

from .generic import sliced_wasserstein  # noqa: E402

MAX_W2_POINTS = 1000
"""Points per side of the exact (assignment) 2-Wasserstein distance."""
MAX_PAIRWISE_POINTS = 2000
"""Points per side of the energy distance."""
COVERAGE_SHARE = 0.1
"""A mode is covered when it holds at least this fraction of its fair share of the samples."""


def weight_metrics(log_w: torch.Tensor, log_z: float | None) -> dict[str, float]:
    """log Z estimate, ELBO, normalised ESS and, with an exact log Z, their errors."""
    log_w = log_w.double()
    n = len(log_w)
    log_z_hat = float(torch.logsumexp(log_w, 0) - math.log(n))
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / n)
    out = {"log_z_estimate": log_z_hat, "elbo": float(log_w.mean()), "ess": ess}
    if log_z is not None:
        out.update(log_z_exact=log_z, log_z_error=abs(log_z_hat - log_z), elbo_gap=log_z - out["elbo"])
    return out


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic)."""
    x, y = x.double()[:MAX_PAIRWISE_POINTS], y.double()[:MAX_PAIRWISE_POINTS]
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def wasserstein2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance between equal-size subsets (optimal assignment)."""
    n = min(len(x), len(y), MAX_W2_POINTS)
    cost = torch.cdist(x[:n].double(), y[:n].double()).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(math.sqrt(cost[rows, cols].mean()))


def mode_metrics(modes: torch.Tensor, num_modes: int, weights: torch.Tensor) -> dict[str, Any]:
    """Coverage, normalised entropy and weight error of the samples' mode frequencies (exact weights 1/K)."""
    counts = torch.bincount(modes, minlength=num_modes).double()
    freq = counts / counts.sum()
    weighted = torch.zeros(num_modes, dtype=torch.float64).index_add_(0, modes, weights.double())
    entropy = float(-(freq[freq > 0] * freq[freq > 0].log()).sum() / math.log(num_modes)) if num_modes > 1 else 1.0
    fair = len(modes) / num_modes
    return {"modes_covered": int((counts >= COVERAGE_SHARE * fair).sum()), "num_modes": num_modes,
            "mode_entropy": entropy, "mode_weight_error": float((freq - 1 / num_modes).abs().max()),
            "mode_weight_error_reweighted": float((weighted - 1 / num_modes).abs().max()),
            "mode_weights": freq.tolist() if num_modes <= 64 else None}


def self_normalised(log_w: torch.Tensor) -> torch.Tensor:
    """softmax(log w): the self-normalised importance weights."""
    return torch.softmax(log_w.double(), 0)


def continuous_metrics(target: Any, x: torch.Tensor, w: torch.Tensor, reference: torch.Tensor,
                       projections: int, gen: torch.Generator) -> dict[str, Any]:
    """Distances to the ground truth, and modes or particle histograms where the target has them."""
    if hasattr(target, "pair_distances"):  # particles: compare centred configurations
        x, reference = centred(target, x), centred(target, reference)
    out: dict[str, Any] = {"energy_distance": energy_distance(x, reference), "wasserstein2": wasserstein2(x, reference),
                           "sliced_wasserstein": sliced_wasserstein(x, reference, projections, gen)}
    if hasattr(target, "mode_of"):
        out.update(mode_metrics(target.mode_of(x), target.num_modes, w))
    if hasattr(target, "in_mode"):  # diffuse samples are assigned to a nearest mode too: count the sharp ones
        inside = target.in_mode(x)
        counts = torch.bincount(target.mode_of(x)[inside], minlength=target.num_modes)
        out["fraction_in_modes"] = float(inside.double().mean())
        out["modes_resolved"] = int((counts >= COVERAGE_SHARE * len(x) / target.num_modes).sum())
    if hasattr(target, "pair_distances"):
        out["energy_w1"] = wasserstein_distance(target.energy(x).numpy(), target.energy(reference).numpy())
        out["distance_w1"] = wasserstein_distance(target.pair_distances(x).flatten().numpy(),
                                                  target.pair_distances(reference).flatten().numpy())
    return out


def centred(target: Any, x: torch.Tensor) -> torch.Tensor:
    """Particle configurations with their centre of mass moved to the origin."""
    pos = x.reshape(len(x), target.num_particles, target.spatial_dim)
    return (pos - pos.mean(1, keepdim=True)).reshape(len(x), -1)


def lattice_metrics(target: Any, facts: dict[str, Any], x: torch.Tensor, w: torch.Tensor,
                    reference: torch.Tensor) -> dict[str, Any]:
    """Magnetisation and energy per site of samples (plain and reweighted) against the ground truth."""
    sites = target.dim
    m, e = target.magnetisation(x), target.energy(x) / sites
    m_ref, e_ref = target.magnetisation(reference), target.energy(reference) / sites
    abs_m = m.abs() if facts["num_states"] == 2 else m
    abs_ref = m_ref.abs() if facts["num_states"] == 2 else m_ref
    out = {"abs_magnetisation": float(abs_m.mean()), "abs_magnetisation_reference": float(abs_ref.mean()),
           "abs_magnetisation_error": float((abs_m.mean() - abs_ref.mean()).abs()),
           "abs_magnetisation_error_reweighted": float(((w * abs_m).sum() - abs_ref.mean()).abs()),
           "energy_per_site": float(e.mean()), "energy_per_site_reference": float(e_ref.mean()),
           "energy_per_site_error_reweighted": float(((w * e).sum() - e_ref.mean()).abs())}
    if facts.get("exact_mean_energy") is not None:
        exact = facts["exact_mean_energy"] / sites
        out.update(energy_per_site_exact=exact, energy_per_site_error=abs(float(e.mean()) - exact))
    else:
        out["energy_per_site_error"] = abs(float(e.mean() - e_ref.mean()))
    if facts["num_states"] == 2:
        out["p_magnetisation_positive"] = float((m > 0).double().mean())
    return out


def sampler_metrics(target: Any, facts: dict[str, Any], x: torch.Tensor, log_w: torch.Tensor,
                    reference: torch.Tensor, spec: Any, gen: torch.Generator,
                    out: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Every metric that fits the target, and its plots (PNG files in `out`)."""
    metrics: dict[str, Any] = {"num_samples": len(x), "num_reference": len(reference),
                               "reference_source": facts.get("source")}
    metrics.update(weight_metrics(log_w, facts.get("log_z")))
    w = self_normalised(log_w)
    if facts["discrete"]:
        metrics.update(lattice_metrics(target, facts, x, w, reference))
    else:
        metrics.update(continuous_metrics(target, x.float(), w, reference.float(), spec.sw_projections, gen))
    return metrics, {"samples vs ground truth": plot_comparison(target, x, reference, out / "comparison.png")}


def plot_reference(target: Any, x: torch.Tensor, path: Path, title: str) -> Path:
    """A PNG of ground-truth samples (the same panels as the comparison plot)."""
    return plot_comparison(target, None, x, path, title)


def plot_comparison(target: Any, x: torch.Tensor | None, reference: torch.Tensor, path: Path,
                    title: str = "samples (orange) vs ground truth (blue)") -> Path:
    """Scatter of the first two coordinates (continuous), energy and distance histograms (particles),
    or magnetisation and energy-per-site histograms (lattices)."""
    sets = [("ground truth", reference)] + ([("samples", x)] if x is not None else [])
    if target.discrete:
        panels = [("magnetisation", target.magnetisation), ("energy per site", lambda s: target.energy(s) / target.dim)]
    elif hasattr(target, "pair_distances"):
        panels = [("energy", target.energy), ("interatomic distance", lambda s: target.pair_distances(s).flatten())]
    else:
        panels = []
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * max(1, len(panels)), 3.5), squeeze=False)
    if panels:
        for ax, (name, fn) in zip(axes[0], panels, strict=True):
            for label, s in sets:
                ax.hist(fn(s).double().numpy(), bins=40, density=True, histtype="step", label=label)
            ax.set_xlabel(name)
        axes[0][0].legend(fontsize=7)
    else:
        ax = axes[0][0]
        for label, s in sets:
            s = s.float()
            ax.scatter(s[:, 0], s[:, 1] if s.shape[1] > 1 else torch.zeros(len(s)), s=2, alpha=0.5, label=label)
        if hasattr(target, "means"):
            ax.scatter(target.means[:, 0], target.means[:, 1], marker="x", c="k", s=12, label="modes")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

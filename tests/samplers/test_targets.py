"""Energy targets: exact log Z against brute force and quadrature, exact samples against exact moments,
and the MCMC ground truth (Metropolis sweeps, split R-hat) against exact lattice moments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from diffpipe.schemas.targets import (
    DoubleWellParticlesTarget,
    EnergyData,
    GaussianMixtureTarget,
    IsingTarget,
    ManyWellTarget,
    PottsTarget,
)
from diffpipe.tasks.targets import grad_log_prob, make_target
from diffpipe.tasks.targets.mcmc import run_chain, split_rhat

# log Z of the periodic lattices computed independently by a numpy transfer matrix
PUBLISHED_LOG_Z = [
    (IsingTarget(size=4, beta=0.28, field=0.1), 12.561515),
    (IsingTarget(size=6, beta=0.6), 44.258107),
    (IsingTarget(size=10, beta=0.4407), 93.612250),
    (PottsTarget(size=4, q=3, beta=1.2), 39.846985),
    (PottsTarget(size=4, q=4, beta=1.3), 43.331755),
]


@pytest.mark.parametrize("spec", [IsingTarget(size=3, beta=0.6), IsingTarget(size=4, beta=0.28, field=0.1),
                                  IsingTarget(size=4, beta=0.4407, coupling=-0.7, field=0.3),
                                  PottsTarget(size=3, q=3, beta=1.2), PottsTarget(size=2, q=4, beta=0.9)])
def test_transfer_matrix_log_z_equals_enumeration(spec) -> None:
    target = make_target(spec)
    assert target.transfer_log_z() == pytest.approx(target.enumerated_log_z(), abs=1e-9)


@pytest.mark.parametrize(("spec", "value"), PUBLISHED_LOG_Z)
def test_lattice_log_z_matches_independent_values(spec, value) -> None:
    assert make_target(spec).log_z() == pytest.approx(value, abs=2e-6)


def test_many_well_log_z_equals_numerical_integration() -> None:
    target = make_target(ManyWellTarget(dim=2, wells=1, delta=4.0))
    z, _ = integrate.dblquad(lambda y, x: math.exp(float(target.log_prob(torch.tensor([[x, y]], dtype=torch.float64)))),
                             -6, 6, -10, 10)
    assert target.log_z() == pytest.approx(math.log(z), abs=1e-6)
    assert make_target(ManyWellTarget()).log_z() == pytest.approx(-0.541056, abs=1e-6)


def test_mixture_is_normalised_and_its_score_is_finite() -> None:
    target = make_target(GaussianMixtureTarget(num_modes=5, loc_scale=3.0, std=1.0))
    g = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    density = target.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1).double()).exp()
    assert float(density.sum() * (g[1] - g[0]) ** 2) == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(grad_log_prob(target, torch.randn(8, 2))).all()


def test_mixture_default_is_gmm40_with_exact_samples() -> None:
    target = make_target(GaussianMixtureTarget())
    assert target.means.shape == (40, 2) and target.means.abs().max() <= 40
    x = target.exact_sample(200_000, torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), target.means.mean(0), atol=0.2)
    assert torch.bincount(target.mode_of(x), minlength=40).min() > 4500
    assert 0.988 <= float(target.in_mode(x).double().mean()) <= 0.995  # 0.99, a little more where modes overlap


def test_many_well_exact_samples_have_the_quadrature_moments() -> None:
    target = make_target(ManyWellTarget(dim=6, wells=4, delta=4.0))
    x = target.exact_sample(200_000, torch.Generator().manual_seed(1)).double()
    norm, _ = integrate.quad(lambda t: math.exp(-((t * t - 4) ** 2)), -8, 8, points=[-2, 0, 2])
    second, _ = integrate.quad(lambda t: t * t * math.exp(-((t * t - 4) ** 2)), -8, 8, points=[-2, 0, 2])
    assert torch.allclose(x[:, :4].square().mean(0), torch.full((4,), second / norm, dtype=torch.float64), atol=0.02)
    assert torch.allclose(x[:, 4:].square().mean(0), torch.ones(2, dtype=torch.float64), atol=0.02)
    assert torch.allclose(x.mean(0), torch.zeros(6, dtype=torch.float64), atol=0.02)
    assert torch.bincount(target.mode_of(x.float()), minlength=16).min() > 11_000


def test_enumerated_ising_samples_have_the_exact_energy_and_magnetisation() -> None:
    target = make_target(IsingTarget(size=4, beta=0.4407))
    x = target.exact_sample(100_000, torch.Generator().manual_seed(0))
    assert float(target.energy(x).mean()) == pytest.approx(target.exact_mean_energy(), abs=0.1)
    states, logp = target.enumerate()
    exact_abs_m = float((torch.softmax(logp, 0) * target.magnetisation(states).abs()).sum())
    assert float(target.magnetisation(x).abs().mean()) == pytest.approx(exact_abs_m, abs=0.005)
    assert exact_abs_m == pytest.approx(0.84388, abs=1e-5)


def test_metropolis_chains_reach_the_exact_mean_energy_of_a_lattice_too_large_to_enumerate() -> None:
    data = EnergyData(target=IsingTarget(size=6, beta=0.3),
                      mcmc={"chains": 2, "walkers_per_chain": 128, "burn_in": 200, "sweeps": 600})
    target = make_target(data.target)
    runs = [run_chain(data.model_dump(mode="json"), c) for c in range(2)]
    logp = np.concatenate([r[1] for r in runs])
    energy = -logp / target.beta
    se = energy.mean(1).std(ddof=1) / math.sqrt(len(energy))
    assert abs(energy.mean() - target.exact_mean_energy()) < 5 * se
    assert split_rhat(logp) < 1.05


def test_split_rhat_flags_chains_stuck_in_different_places() -> None:
    gen = np.random.default_rng(0)
    mixed = gen.normal(size=(8, 400))
    stuck = mixed + np.arange(8)[:, None]
    assert split_rhat(mixed) < 1.02 and split_rhat(stuck) > 1.5


def test_dw4_energy_depends_only_on_relative_positions() -> None:
    target = make_target(DoubleWellParticlesTarget())
    x = torch.randn(16, 8, dtype=torch.float64) * 3
    shifted = x + torch.tensor([1.5, -2.0]).repeat(4).double()
    assert torch.allclose(target.energy(x), target.energy(shifted))
    angle = torch.tensor(0.7, dtype=torch.float64)
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    rotated = (x.reshape(16, 4, 2) @ rot.T).reshape(16, 8)
    assert torch.allclose(target.energy(x), target.energy(rotated))

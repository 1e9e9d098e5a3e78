"""EDM and DDPM networks as velocity teachers: exact agreement with the analytic ring's velocity."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler
from flowmap_helpers import generator

from diffpipe.schemas import DDPM, EDM, FlowMatching, Regression
from diffpipe.tasks import timeconv
from diffpipe.tasks.flowmap.ring import AnalyticRing
from diffpipe.tasks.flowmap.teachers import ddpm_timestep_for_t, velocity_teacher

RING = AnalyticRing()


def _states(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy ring states z_t at times spread over (0.02, 0.98), float64."""
    g = generator(3)
    t = 0.02 + 0.96 * torch.rand(n, generator=g, dtype=torch.float64)
    x0, eps = RING.sample(n, g, torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    return (1 - t[:, None]) * x0 + t[:, None] * eps, t


def exact_edm_network(objective: EDM):
    """The EDM-preconditioned network F whose denoiser is the ring's exact posterior mean."""
    precond = EDMEulerScheduler(sigma_data=objective.sigma_data)

    def net(x_in: torch.Tensor, timestep: torch.Tensor, cond: object) -> torch.Tensor:
        t = timeconv.t_from_diffusers_timestep(timestep)
        sigma = timeconv.sigma_from_t(t)[:, None]
        x_sigma = x_in / precond.precondition_inputs(torch.ones_like(x_in), sigma)
        x0 = RING.posterior_mean(timeconv.fm_sample_from_edm(x_sigma, sigma[:, 0]), t)
        c_skip = precond.precondition_outputs(torch.ones_like(x0), torch.zeros_like(x0), sigma)
        c_out = precond.precondition_outputs(torch.zeros_like(x0), torch.ones_like(x0), sigma)
        return (x0 - c_skip * x_sigma) / c_out

    return net


def exact_ddpm_network(objective: DDPM):
    """The DDPM network (epsilon or v) predicting the ring's exact posterior at its (fractional) step."""
    table = DDPMScheduler(num_train_timesteps=objective.num_train_timesteps,
                          beta_schedule=objective.beta_schedule).alphas_cumprod.double()

    def net(x_vp: torch.Tensor, step: torch.Tensor, cond: object) -> torch.Tensor:
        lo = step.floor().long().clamp(max=len(table) - 2)
        alpha_bar = table[lo] + (step - lo) * (table[lo + 1] - table[lo])
        a, b = alpha_bar.sqrt()[:, None], (1 - alpha_bar).sqrt()[:, None]
        t = timeconv.t_from_alpha_bar(alpha_bar)
        x0 = RING.posterior_mean(timeconv.fm_sample_from_vp(x_vp, alpha_bar), t)
        eps = (x_vp - a * x0) / b
        return eps if objective.prediction == "epsilon" else a * eps - b * x0

    return net


def test_edm_network_converts_to_the_exact_velocity():
    z, t = _states()
    objective = EDM()
    v = velocity_teacher(objective, exact_edm_network(objective))(z, t, None)
    assert torch.allclose(v, RING.velocity(z, t), rtol=1e-5, atol=1e-5)  # the denoiser output is float32


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
def test_ddpm_network_converts_to_the_exact_velocity(prediction, schedule):
    objective = DDPM(prediction=prediction, beta_schedule=schedule)
    table = DDPMScheduler(beta_schedule=schedule).alphas_cumprod.double()
    z, t = _states()
    inside = (t > timeconv.t_from_alpha_bar(table[0])) & (t < timeconv.t_from_alpha_bar(table[-1]))
    v = velocity_teacher(objective, exact_ddpm_network(objective))(z, t, None)
    assert inside.sum() > 40
    assert torch.allclose(v[inside], RING.velocity(z, t)[inside], rtol=1e-7, atol=1e-7)


def test_ddpm_steps_match_the_signal_to_noise_ratio_and_clamp_outside_the_schedule():
    table = DDPMScheduler().alphas_cumprod
    k = torch.tensor([0.0, 10.0, 500.0, 999.0])
    step, alpha_bar = ddpm_timestep_for_t(table, timeconv.t_from_alpha_bar(table[k.long()].double()))
    assert torch.allclose(step.double(), k.double(), atol=1e-6)
    assert torch.allclose(alpha_bar, table[k.long()].double(), rtol=1e-9)
    edges, _ = ddpm_timestep_for_t(table, torch.tensor([1e-6, 1.0], dtype=torch.float64))
    assert edges.tolist() == [0.0, 999.0]


def test_flow_matching_is_passed_through_and_regression_is_refused():
    z, t = _states(8)
    v = velocity_teacher(FlowMatching(), lambda x, ts, c: RING.velocity(x, timeconv.t_from_diffusers_timestep(ts)))
    assert torch.equal(v(z, t, None), RING.velocity(z, t))
    with pytest.raises(ValueError, match="regression"):
        velocity_teacher(Regression(), lambda x, ts, c: x)

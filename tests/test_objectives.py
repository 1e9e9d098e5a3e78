"""Objectives and samplers agree with exact analytic models; time converters are exact."""

from __future__ import annotations

import pytest
import torch

from diffpipe.schemas import DDPM, EDM, FlowMatching
from diffpipe.tasks import timeconv
from diffpipe.tasks.objectives import make_loss
from diffpipe.tasks.sampling import CountingNet, sample
from diffpipe.tasks.schedulers import make_scheduler

S = 0.5  # data ~ N(0, S^2 I): every objective's optimal network is known in closed form


def test_time_converters_round_trip_and_match_snr() -> None:
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    sigma = timeconv.sigma_from_t(t)
    assert torch.allclose(timeconv.t_from_sigma(sigma), t)
    x = torch.randn(50, 3, dtype=torch.float64)
    assert torch.allclose(timeconv.fm_sample_from_edm(timeconv.edm_sample_from_fm(x, t), sigma), x)
    abar = torch.linspace(0.001, 0.999, 50, dtype=torch.float64)
    tv = timeconv.t_from_alpha_bar(abar)
    # same signal-to-noise ratio: (1-t)^2 / t^2 == abar / (1 - abar)
    assert torch.allclose(((1 - tv) / tv) ** 2, abar / (1 - abar))
    assert torch.allclose(timeconv.fm_sample_from_vp(timeconv.vp_sample_from_fm(x, abar), abar), x)


def _fm_velocity(x, timestep, labels):
    t = timeconv.t_from_diffusers_timestep(timestep.double()).reshape(-1, 1, 1, 1)
    x0_hat = (1 - t) * S**2 / ((1 - t) ** 2 * S**2 + t**2) * x
    return (x - x0_hat) / t


def _ddpm_net(spec: DDPM):
    abar_all = make_loss(spec).scheduler.alphas_cumprod.double()

    def net(x, timestep, labels):
        abar = abar_all[timestep.long()].reshape(-1, 1, 1, 1)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        eps_hat = b / (a * a * S**2 + b * b) * x
        x0_hat = a * S**2 / (a * a * S**2 + b * b) * x
        return eps_hat if spec.prediction == "epsilon" else a * eps_hat - b * x0_hat

    return net


def _edm_net(spec: EDM):
    sd = spec.sigma_data

    def net(xin, timestep, labels):
        sigma = timeconv.sigma_from_t(timestep.double() / 1000).reshape(-1, 1, 1, 1)
        x = xin * (sigma**2 + sd**2).sqrt()
        denoised = S**2 / (S**2 + sigma**2) * x
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        return (denoised - c_skip * x) / c_out

    return net


CASES = [
    (FlowMatching(), "FlowMatchEulerDiscreteScheduler", lambda s: _fm_velocity),
    (FlowMatching(), "DPMSolverMultistepScheduler", lambda s: _fm_velocity),
    (DDPM(prediction="epsilon"), "DDIMScheduler", _ddpm_net),  # clip_sample off: N(0, S^2) has tails past 1
    (DDPM(prediction="v_prediction"), "DPMSolverMultistepScheduler", _ddpm_net),
    (DDPM(prediction="epsilon"), "EulerDiscreteScheduler", _ddpm_net),
    (EDM(), "EDMEulerScheduler", _edm_net),
    (EDM(), "EDMDPMSolverMultistepScheduler", _edm_net),
]


@pytest.mark.parametrize(("objective", "scheduler", "make_net"), CASES, ids=[f"{c[0].kind}-{c[1]}" for c in CASES])
def test_sampler_with_exact_model_reproduces_data(objective, scheduler, make_net) -> None:
    """Sampling the exact optimal network must return samples with the data's standard deviation."""
    net = CountingNet(lambda x, t, lab: make_net(objective)(x.double(), t, lab).float())
    sched = make_scheduler(objective, scheduler, {"clip_sample": False} if scheduler == "DDIMScheduler" else {})
    x = sample(net, objective, sched, 200, (4000, 1, 2, 2), None, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.isfinite(x).all()
    assert x.std().item() == pytest.approx(S, rel=0.04)
    assert x.mean().abs().item() < 0.03
    assert net.calls >= 200


@pytest.mark.parametrize("objective", [FlowMatching(), FlowMatching(time_sampling="uniform"), DDPM(),
                                       DDPM(prediction="v_prediction"), EDM()], ids=lambda o: o.kind)
def test_exact_model_minimises_loss(objective) -> None:
    """The analytic optimum has lower loss than a shifted model (the loss targets are right)."""
    nets = {"flow_matching": lambda o: _fm_velocity, "ddpm": _ddpm_net, "edm": _edm_net}
    exact = nets[objective.kind](objective)
    loss = make_loss(objective)
    x0 = S * torch.randn(4096, 1, 2, 2)
    def mean_loss(shift: float) -> torch.Tensor:
        net = lambda x, t, lab: exact(x.double(), t, lab).float() + shift  # noqa: E731
        return loss(net, x0, None, torch.Generator().manual_seed(1)).mean()

    best, worse = mean_loss(0.0), mean_loss(0.1)
    assert torch.isfinite(best) and best < worse

"""The log-weight estimators are unbiased for Z with an untrained, non-zero network (E[w] = Z exactly for the
discrete chains), tempering picks the trust-region gamma, the warm start weights the buffer at its own beta,
and the WDCE loss learns a lattice target."""

from __future__ import annotations

import math

import pytest
import torch

from diffpipe.schemas.samplers import AdjointSampler, MDNSSampler, PDNSSampler, PISSampler
from diffpipe.schemas.targets import IsingTarget, ManyWellTarget
from diffpipe.tasks.nets.mdlm import MaskedDiffusionTransformer
from diffpipe.tasks.nets.time_mlp import TimeMLP
from diffpipe.tasks.samplers.adjoint import AdjointSampling
from diffpipe.tasks.samplers.common import CountingTarget, tempered_gamma
from diffpipe.tasks.samplers.masked import masked_rollout
from diffpipe.tasks.samplers.mdns import MDNS
from diffpipe.tasks.samplers.pdns import ContinuousPDNS
from diffpipe.tasks.samplers.pis import PIS
from diffpipe.tasks.targets import make_target

CPU = torch.device("cpu")


def random_control(dim: int) -> TimeMLP:
    """A TimeMLP whose output layer is not zero, so the controlled chain differs from the reference."""
    torch.manual_seed(0)
    net = TimeMLP(dim=dim, hidden=16, layers=1, time_embedding=8)
    torch.nn.init.normal_(net.out.weight, std=0.5)
    return net


@pytest.mark.parametrize("method", ["pdns", "pis", "adjoint"])
def test_continuous_log_weights_are_unbiased_for_z(method: str) -> None:
    target = CountingTarget(make_target(ManyWellTarget(dim=1, wells=1, delta=1.0)))
    options = {"sde_steps": 10, "batch_size": 1000}
    sampler = {"pdns": lambda: ContinuousPDNS(PDNSSampler(name="s", sigma=1.5, **options), target,
                                              random_control(1), CPU),
               "pis": lambda: PIS(PISSampler(name="s", sigma=1.5, **options), target, random_control(1), CPU),
               "adjoint": lambda: AdjointSampling(AdjointSampler(name="s", sigma_max=1.5, sigma_min=0.2, **options),
                                                  target, random_control(1), CPU)}[method]()
    x, log_w = sampler.sample(sampler.model, 200_000, torch.Generator().manual_seed(3))
    assert x.std() > 0.2
    w = (log_w - target.log_z()).exp()
    assert float(w.mean()) == pytest.approx(1.0, abs=4 * float(w.std()) / math.sqrt(len(w)) + 1e-3)
    assert float(w.std()) > 0.05  # the control moved the chain off the reference: the check is not vacuous


def test_masked_sampler_log_weights_are_unbiased_for_z() -> None:
    target = CountingTarget(make_target(IsingTarget(size=3, beta=0.2, field=0.1)))
    torch.manual_seed(0)
    model = MaskedDiffusionTransformer(vocab_size=3, max_length=9, mask_token_id=2, d_model=16, num_layers=1,
                                       num_heads=2)
    torch.nn.init.normal_(model.head.weight, std=0.3)  # a light-tailed w, so that 4 standard errors mean something
    sampler = MDNS(MDNSSampler(name="s"), target, model, CPU)
    _, log_w = sampler.sample(model, 20_000, torch.Generator().manual_seed(1))
    w = (log_w - target.log_z()).exp()
    assert float(w.mean()) == pytest.approx(1.0, abs=4 * float(w.std()) / math.sqrt(len(w)))
    assert float(w.std()) > 0.05


def test_tempered_gamma_meets_the_trust_region() -> None:
    log_w = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    gamma = tempered_gamma(log_w, 0.5)
    kl = float(torch.logsumexp(gamma * log_w, 0) - math.log(len(log_w)) - gamma * log_w.mean())
    assert 0 < gamma < 1 and kl == pytest.approx(0.5, abs=1e-6)
    assert tempered_gamma(log_w * 1e-3, 0.5) == 1.0


@pytest.mark.slow
def test_mdns_learns_the_4x4_ising_model() -> None:
    target = CountingTarget(make_target(IsingTarget(size=4, beta=0.28, field=0.1)))
    torch.manual_seed(0)
    model = MaskedDiffusionTransformer(vocab_size=3, max_length=16, mask_token_id=2, d_model=32, num_layers=1,
                                       num_heads=2)
    sampler = MDNS(MDNSSampler(name="s", batch_size=128, replicates=4), target, model, CPU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)

    def ess() -> float:
        _, log_w = sampler.sample(model, 2000, torch.Generator().manual_seed(2))
        return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / len(log_w))

    before = ess()
    for _ in range(60):
        loss = sampler.step_loss(gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ess() > before + 0.1
    assert target.evals == 6 * 128 + 2 * 2000


def test_warm_start_weights_the_buffer_at_the_warm_beta_then_at_the_target_beta() -> None:
    target = CountingTarget(make_target(IsingTarget(size=3, beta=0.6)))
    torch.manual_seed(0)
    model = MaskedDiffusionTransformer(vocab_size=3, max_length=9, mask_token_id=2, d_model=16, num_layers=1,
                                       num_heads=2)
    spec = MDNSSampler(name="s", batch_size=32, resample_every=2, steps=10, warm_start_beta=0.2, warm_start_steps=4)
    sampler = MDNS(spec, target, model, CPU)
    for step in range(6):
        gen = torch.Generator().manual_seed(step)
        sampler.step_loss(gen)
        if step % 2:
            continue
        x, log_q = masked_rollout(model, 32, 9, 2, torch.Generator().manual_seed(step), CPU)
        beta = 0.2 if step < 4 else 0.6
        expected = torch.softmax(-beta * target.energy(x).double() - log_q, 0)
        assert torch.equal(sampler.tensors["x"], x)
        assert torch.allclose(sampler.tensors["weights"], expected, rtol=1e-9, atol=0)

"""MeanFlow: identity on the exact ring flow, JVP vs finite differences, time sampling, tiny training."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from flowmap_helpers import generator, method_spec  # noqa: E402

from diffpipe.tasks.flowmap.meanflow import MeanFlowLoss, meanflow_target, sample_two_times  # noqa: E402
from diffpipe.tasks.flowmap.meanflow_distill import MeanFlowDistillLoss  # noqa: E402
from diffpipe.tasks.flowmap.sampling import sample_flow_map  # noqa: E402
from diffpipe.tasks.metrics.generic import mmd2_unbiased  # noqa: E402
from diffpipe.tasks.nets.flowmap import FlowMapNet, TwoTimeCall  # noqa: E402

BANDWIDTHS = [0.1, 0.5, 1.0]
F64 = torch.float64


def _state(ring, n: int, t: float, seed: int = 0):
    g = generator(seed)
    x0 = ring.sample(n, g, dtype=F64)
    tt = torch.full((n,), t, dtype=F64)
    z = (1 - t) * x0 + t * torch.randn(n, 2, generator=g, dtype=F64)
    return z, tt


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_meanflow_identity_holds_on_exact_ring_flow_with_jvp(ring):
    z, t = _state(ring, 64, 0.7)
    r = torch.full_like(t, 0.2)
    u_fn = lambda zz, tt: ring.flow_map(zz, r, tt, substeps=100)  # noqa: E731
    u, target = meanflow_target(u_fn, z, r, t, ring.velocity(z, t), derivative="jvp")
    assert _relative(target, u) < 1e-5
    # the identity needs the derivative along the flow: dropping the z-direction breaks it
    _, partial_t_only = meanflow_target(u_fn, z, r, t, torch.zeros_like(z), derivative="jvp")
    wrong = ring.velocity(z, t) - 0.5 * (partial_t_only - torch.zeros_like(z))
    assert _relative(wrong, u) > 1e-2


def test_jvp_and_finite_difference_targets_agree_on_exact_flow(ring):
    z, t = _state(ring, 64, 0.6, seed=1)
    r = torch.full_like(t, 0.1)
    u_fn = lambda zz, tt: ring.flow_map(zz, r, tt, substeps=60)  # noqa: E731
    v = ring.velocity(z, t)
    _, by_jvp = meanflow_target(u_fn, z, r, t, v, derivative="jvp")
    _, by_fd = meanflow_target(u_fn, z, r, t, v, derivative="finite_difference", fd_delta=5e-3)
    assert _relative(by_fd, by_jvp) < 1e-4


def test_jvp_and_finite_difference_losses_agree_on_a_network():
    torch.manual_seed(0)
    net = TwoTimeCall(FlowMapNet(base_class="VelocityMLP", base_config={"hidden": 32, "depth": 2, "time_channels": 16}))
    x0 = torch.randn(128, 2)
    def loss(**options):
        return MeanFlowLoss(method_spec("meanflow", **options))(net, x0, None, generator(3)).detach()

    by_jvp, by_fd = loss(derivative="jvp"), loss(derivative="finite_difference")
    assert _relative(by_fd, by_jvp) < 1e-3
    coarse = loss(derivative="finite_difference", fd_delta=1e-1)
    assert _relative(coarse, by_jvp) > _relative(by_fd, by_jvp)


def test_time_samplers_keep_r_below_t_and_the_configured_share_of_r_equal_t():
    for sampler in ("v0", "v1"):
        r, t = sample_two_times(20000, generator(), sampler=sampler, ratio=0.75)
        assert bool((r <= t).all()) and bool(((t > 0) & (t < 1)).all())
        equal = float((r == t).float().mean())
        if sampler == "v0":
            assert abs(equal - 0.25) < 0.02
        else:
            assert 0.25 <= equal < 0.35


def test_distillation_loss_vanishes_for_the_exact_flow_map_but_training_loss_does_not(ring):
    x0 = ring.sample(96, generator(), dtype=F64)
    exact = lambda z, r, t, cond: ring.flow_map(z, r, t, substeps=60)  # noqa: E731
    spec = method_spec("meanflow_distill", ratio=0.75, norm_p=0.0, derivative="jvp")
    distill = MeanFlowDistillLoss(spec, ring.velocity).per_sample_error(exact, x0, None, generator(1))
    train = MeanFlowLoss(method_spec("meanflow", norm_p=0.0)).per_sample_error(exact, x0, None, generator(1))
    assert float(distill.mean()) < 1e-8
    assert float(train.mean()) > 0.1


def test_adaptive_weight_divides_by_the_detached_error_power():
    torch.manual_seed(0)
    net = TwoTimeCall(FlowMapNet(base_class="VelocityMLP", base_config={"hidden": 16, "depth": 1, "time_channels": 8}))
    x0 = torch.randn(64, 2)
    loss = MeanFlowLoss(method_spec("meanflow", norm_p=0.75))
    err = loss.per_sample_error(net, x0, None, generator(5)).detach()
    weighted = loss(net, x0, None, generator(5)).detach()
    assert torch.allclose(weighted, err / (err + 1e-3) ** 0.75, rtol=1e-5)


def test_tiny_meanflow_training_from_random_init_lowers_one_step_mmd(ring):
    torch.manual_seed(0)
    net = TwoTimeCall(FlowMapNet(base_class="VelocityMLP", base_config={"hidden": 64, "depth": 2, "time_channels": 16}))
    data = ring.sample(600, generator(1))
    noise = torch.randn(600, 2, generator=generator(2))

    def one_step_mmd() -> float:
        return mmd2_unbiased(sample_flow_map(net, noise, 1), data, BANDWIDTHS)

    before = one_step_mmd()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn, g = MeanFlowLoss(method_spec("meanflow")), generator(3)
    for _ in range(300):
        loss = loss_fn(net, ring.sample(256, g), None, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = one_step_mmd()
    assert after < 0.5 * before, (before, after)

"""Consistency distillation and the few-step samplers, on the exact ring flow map."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from flowmap_helpers import generator, method_spec  # noqa: E402

from diffpipe.tasks.flowmap.consistency import ConsistencyDistillationLoss, karras_times  # noqa: E402
from diffpipe.tasks.flowmap.sampling import sample_consistency, sample_flow_map, sample_teacher  # noqa: E402
from diffpipe.tasks.metrics.generic import mmd2_unbiased  # noqa: E402
from diffpipe.tasks.nets.flowmap import FlowMapNet, TwoTimeCall  # noqa: E402

F64 = torch.float64
BANDWIDTHS = [0.1, 0.5, 1.0]


def _exact(ring, substeps: int = 100):
    return lambda z, r, t, cond: ring.flow_map(z, r, t, substeps=substeps)


def test_karras_times_increase_inside_the_unit_interval():
    t = karras_times(18)
    assert t.shape == (18,) and bool((t[1:] > t[:-1]).all())
    assert abs(float(t[0]) - 0.002 / 1.002) < 1e-12 and abs(float(t[-1]) - 80 / 81) < 1e-12


def test_consistency_distillation_loss_is_tiny_for_the_exact_flow_map(ring):
    x0 = ring.sample(256, generator(), dtype=F64)
    loss = ConsistencyDistillationLoss(method_spec("consistency", target_ema=0.0), ring.velocity)
    exact = float(loss(_exact(ring), x0, None, generator(1)).mean())
    zero = float(loss(lambda z, r, t, c: torch.zeros_like(z), x0, None, generator(1)).mean())
    assert exact < 1e-3 * zero, (exact, zero)


def test_ema_target_starts_as_a_copy_and_follows_the_online_weights(ring):
    torch.manual_seed(0)
    net = TwoTimeCall(FlowMapNet(base_class="VelocityMLP", base_config={"hidden": 8, "depth": 1, "time_channels": 8}))
    loss = ConsistencyDistillationLoss(method_spec("consistency", target_ema=0.9), ring.velocity)
    x0 = ring.sample(16, generator())
    loss(net, x0, None, generator(1))
    start = {k: v.clone() for k, v in loss.target_state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    loss(net, x0, None, generator(2))
    moved = loss.target_state_dict()
    for k, v in start.items():
        assert torch.allclose(moved[k], v + 0.1, atol=1e-6)


def test_flow_map_sampler_steps_through_the_scheduler_grid(ring):
    calls = []

    def recording(z, r, t, cond):
        calls.append((float(r[0]), float(t[0])))
        return ring.flow_map(z, r, t, substeps=100)

    noise = torch.randn(300, 2, generator=generator(), dtype=F64)
    one = sample_flow_map(recording, noise, 1)
    assert calls == [(0.0, 1.0)]
    calls.clear()
    four = sample_flow_map(recording, noise, 4)
    assert calls == [(0.75, 1.0), (0.5, 0.75), (0.25, 0.5), (0.0, 0.25)]
    assert float((one - four).abs().max()) < 1e-5
    two = sample_flow_map(_exact(ring), noise, times=[1.0, 0.3])
    assert float((one - two).abs().max()) < 1e-5


def test_exact_one_step_flow_map_reproduces_the_data_at_the_mmd_floor(ring):
    n = 800
    data, other = ring.sample(n, generator(1), dtype=F64), ring.sample(n, generator(2), dtype=F64)
    noise = torch.randn(n, 2, generator=generator(3), dtype=F64)
    floor = mmd2_unbiased(other, data, BANDWIDTHS)
    one_step = mmd2_unbiased(sample_flow_map(_exact(ring), noise, 1), data, BANDWIDTHS)
    teacher_one_step = mmd2_unbiased(sample_teacher(ring.velocity, noise, 1), data, BANDWIDTHS)
    assert abs(floor) < 0.005 and abs(one_step) < 0.005, (floor, one_step)
    assert teacher_one_step > 1.0


def test_consistency_multistep_sampler_keeps_the_distribution(ring):
    n = 800
    data = ring.sample(n, generator(1), dtype=F64)
    noise = torch.randn(n, 2, generator=generator(3), dtype=F64)
    two = sample_consistency(_exact(ring, 60), noise, 2, generator=generator(4))
    assert abs(mmd2_unbiased(two, data, BANDWIDTHS)) < 0.005

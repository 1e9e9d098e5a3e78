"""Consistency Mid-Training: teacher trajectories, their time labels, and the two loss forms."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from flowmap_helpers import generator, method_spec  # noqa: E402

from diffpipe.errors import SpecError  # noqa: E402
from diffpipe.tasks.flowmap.cmt import ConsistencyMidTrainingLoss  # noqa: E402
from diffpipe.tasks.flowmap.trajectories import teacher_trajectory  # noqa: E402

F64 = torch.float64


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=generator(seed), dtype=F64)


def _exact_transport(ring, z: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
    n = z.shape[0]
    return z - (t_from - t_to) * ring.flow_map(z, t_to.expand(n), t_from.expand(n), substeps=200)


def test_exact_solver_targets_equal_the_analytic_endpoint(ring):
    z = _noise(300)
    states, times = teacher_trajectory(ring.velocity, z, None, solver="rk4", steps=16,
                                       solver_options={"substeps": 8})
    assert states.shape == (17, 300, 2) and float(times[0]) == 1.0 and float(times[-1]) == 0.0
    exact_end = z - ring.flow_map(z, torch.zeros(300, dtype=F64), torch.ones(300, dtype=F64), substeps=400)
    assert float((states[-1] - exact_end).abs().max()) < 1e-5
    mid = _exact_transport(ring, z, times[0], times[8])
    assert float((states[8] - mid).abs().max()) < 1e-5


def test_euler_states_are_labelled_with_the_times_the_scheduler_stepped_between(ring):
    z = _noise(200, seed=1)
    states, times = teacher_trajectory(ring.velocity, z, None, solver="FlowMatchEulerDiscreteScheduler",
                                       steps=12)
    assert states.shape[0] == times.shape[0] == 13 and float(times[-2]) == pytest.approx(1e-3)
    for i in range(12):
        euler = states[i] - (times[i] - times[i + 1]) * ring.velocity(states[i], times[i].expand(200))
        assert float((states[i + 1] - euler).abs().max()) < 1e-6


def test_dpm_solver_states_are_labelled_with_the_times_the_solver_used(ring):
    z = _noise(200, seed=1)
    states, times = teacher_trajectory(ring.velocity, z, None, solver="DPMSolverMultistepScheduler", steps=40)
    assert states.shape[0] == times.shape[0] == 41 and float(times[0]) == pytest.approx(0.999)
    for i in (10, 20, 40):
        right = float((states[i] - _exact_transport(ring, z, times[0], times[i])).abs().mean())
        off_by_one = float((states[i] - _exact_transport(ring, z, times[0], times[i - 1])).abs().mean())
        assert right < 0.01 and right < 0.3 * off_by_one, (i, right, off_by_one)


def test_solvers_that_do_not_integrate_a_flow_ode_are_refused(ring):
    with pytest.raises(SpecError, match="solver"):
        teacher_trajectory(ring.velocity, _noise(4), None, solver="DDIMScheduler")
    with pytest.raises(SpecError, match="solver"):
        teacher_trajectory(ring.velocity, _noise(4), None, solver="NoSuchScheduler")


@pytest.mark.parametrize("form", ["flow_map", "consistency"])
def test_cmt_loss_vanishes_for_the_exact_flow_map_with_an_exact_solver(ring, form):
    exact = lambda z, r, t, cond: ring.flow_map(z, r, t, substeps=100)  # noqa: E731
    x0 = torch.zeros(64, 2, dtype=F64)
    loss = ConsistencyMidTrainingLoss(method_spec("cmt", form=form, solver="rk4", solver_steps=8,
                                                  solver_options={"substeps": 12}), ring.velocity)
    values = loss(exact, x0, None, generator(2))
    assert values.shape == (64,)
    assert float(values.max()) < 1e-9
    zero = lambda z, r, t, cond: torch.zeros_like(z)  # noqa: E731
    assert float(loss(zero, x0, None, generator(2)).mean()) > 0.1


def test_cmt_flow_map_loss_sees_the_solver_trajectory_not_the_exact_flow(ring):
    exact = lambda z, r, t, cond: ring.flow_map(z, r, t, substeps=100)  # noqa: E731
    x0 = torch.zeros(64, 2, dtype=F64)
    euler = ConsistencyMidTrainingLoss(method_spec("cmt", solver="FlowMatchEulerDiscreteScheduler", solver_steps=4),
                                       ring.velocity)
    assert float(euler(exact, x0, None, generator(2)).mean()) > 1e-3


def test_trajectories_follow_the_batch_labels():
    seen = []

    def teacher(x, t, cond):
        seen.append(cond.clone())
        return torch.zeros_like(x)

    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    loss = ConsistencyMidTrainingLoss(method_spec("cmt", solver_steps=2, trajectories=3), teacher)
    net = lambda z, r, t, cond: torch.zeros_like(z)  # noqa: E731
    loss(net, torch.zeros(8, 2), labels, generator())
    assert torch.equal(seen[0], labels[:3])

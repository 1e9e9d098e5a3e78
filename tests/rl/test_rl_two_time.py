"""RL of a two-time (flow-map) policy: rollouts are its few-step sampler, log-probabilities are the kernel's own."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from diffpipe.schemas import FlowMatching  # noqa: E402
from diffpipe.schemas.rl import FlowGRPO  # noqa: E402
from diffpipe.tasks.flowmap.sampling import sample_flow_map  # noqa: E402
from diffpipe.tasks.nets.flowmap import FlowMapNet, TwoTimeCall, VelocityMLP, network_fn  # noqa: E402
from diffpipe.tasks.rl.continuous import Nets, rollout, sampler_grid  # noqa: E402
from diffpipe.tasks.rl.continuous.flow_grpo import FlowGRPOAlgorithm  # noqa: E402


def _student() -> FlowMapNet:
    torch.manual_seed(0)
    model = FlowMapNet.from_teacher(VelocityMLP(hidden=32, depth=2, time_channels=16))
    with torch.no_grad():
        model.gap_embedding.linear_2.weight.normal_(std=0.3)  # the jump matters: u(x, r, t) != u(x, t, t)
    return model.eval()


def test_a_noiseless_rollout_is_the_students_own_few_step_sampler() -> None:
    model, steps = _student(), 3
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(4))
    done = rollout(network_fn(model), None, (16, 2), sampler_grid(steps, two_time=True), 0.0,
                   torch.Generator().manual_seed(4), torch.device("cpu"), two_time=True)
    expected = sample_flow_map(TwoTimeCall(model), noise, steps)
    assert torch.allclose(done.x0, expected, atol=1e-6)
    one_time_view = rollout(network_fn(model), None, (16, 2), sampler_grid(steps, two_time=True), 0.0,
                            torch.Generator().manual_seed(4), torch.device("cpu"))
    assert not torch.allclose(one_time_view.x0, expected, atol=1e-3)  # stepping with u(x, t, t) is another sampler


def test_flow_grpo_recomputes_the_rollout_log_probabilities_of_a_two_time_policy_exactly() -> None:
    model, spec = _student(), FlowGRPO(sampler_steps=3, kl_beta=0.0)
    grid = sampler_grid(spec.sampler_steps, two_time=True)
    net = network_fn(model)
    batch = rollout(net, None, (8, 2), grid, spec.noise_level, torch.Generator().manual_seed(1),
                    torch.device("cpu"), keep_states=True, two_time=True)
    algorithm = FlowGRPOAlgorithm(spec, FlowMatching())
    advantages = torch.randn(1, 8, generator=torch.Generator().manual_seed(2))
    parts = algorithm.losses(Nets(net, two_time=True), batch, advantages, torch.Generator())
    assert parts.stats["clip_fraction"] == 0.0  # likelihood ratio 1 at the rollout's own weights
    assert torch.allclose(parts.reward_losses, -advantages.mean(1), atol=1e-6)
    mismatched = algorithm.losses(Nets(net), batch, advantages, torch.Generator())
    assert mismatched.stats["clip_fraction"] > 0.5  # scored as a one-time net, the ratio is far from 1


def test_forward_process_losses_see_a_two_time_policys_jump_to_data() -> None:
    model = _student()
    net = network_fn(model)
    x, timestep = torch.randn(5, 2), torch.rand(5) * 1000
    with torch.no_grad():
        jump = Nets(net, two_time=True).to_data(net)(x, timestep, None)
        assert torch.equal(jump, net(x, timestep, None, torch.zeros(5)))
        assert not torch.allclose(jump, net(x, timestep, None), atol=1e-3)
        assert Nets(net).to_data(net) is net

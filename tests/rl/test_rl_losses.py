"""Continuous RL losses on a toy velocity net: gradient signs, the SDE step density, advantages."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from scipy.stats import norm  # noqa: E402

from diffpipe.schemas import FlowMatching  # noqa: E402
from diffpipe.schemas.rl import AWM, DDRL, DiffusionNFT, FlowGRPO  # noqa: E402
from diffpipe.tasks.rl.continuous import Nets, make_algorithm, rollout, sampler_grid, sde_step  # noqa: E402
from diffpipe.tasks.rl.continuous.common import gaussian_log_prob, group_advantages, noised, velocity  # noqa: E402
from diffpipe.tasks.rl.continuous.ddrl import ddrl_utilities  # noqa: E402

torch.set_num_threads(1)


class ToyVelocity(torch.nn.Module):
    """v(x, t) = w x + b + c t: a velocity field with three scalar parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(-0.3))
        self.b = torch.nn.Parameter(torch.tensor(0.2))
        self.c = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: object) -> torch.Tensor:
        """Velocity at the diffusers timestep (1000 t)."""
        t = (timestep / 1000.0).reshape(-1, *([1] * (x.dim() - 1)))
        return self.w * x + self.b + self.c * t


def fm_error(model: ToyVelocity, x0: torch.Tensor) -> torch.Tensor:
    """Flow-matching error of each sample at fixed times and noise (lower = more likely under the ELBO)."""
    gen = torch.Generator().manual_seed(99)
    t = torch.linspace(0.05, 0.95, 16)
    x = x0.repeat_interleave(16, 0)
    xt, eps = noised(x, t.repeat(x0.shape[0]), gen)
    err = ((velocity(model, xt, t.repeat(x0.shape[0]), None) - (eps - x)) ** 2).flatten(1).mean(1)
    return err.view(x0.shape[0], 16).mean(1)


def sgd_step(model: torch.nn.Module, loss: torch.Tensor, lr: float = 1e-2) -> None:
    """One plain gradient step."""
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


def test_sde_step_log_prob_matches_scipy() -> None:
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 1, 2, 2, generator=gen), torch.randn(3, 1, 2, 2, generator=gen)
    t, t_next = torch.tensor([1.0, 0.6, 0.2]), torch.tensor([0.8, 0.4, 0.0])
    step = sde_step(x, v, t, t_next, t_second=0.8, noise_level=0.7)
    x_next = step.mean + step.std * torch.randn(x.shape, generator=gen)
    # independent density: s = a sqrt(t / (1 - t)) (t = 1 -> second grid time), mean from Flow-GRPO's formula
    for i, (ti, tn) in enumerate(zip(t.tolist(), t_next.tolist(), strict=True)):
        s = 0.7 * (ti / (1 - (0.8 if ti == 1.0 else ti))) ** 0.5
        dt = tn - ti
        mean = x[i] * (1 + s**2 / (2 * ti) * dt) + v[i] * (1 + s**2 * (1 - ti) / (2 * ti)) * dt
        expected = norm.logpdf(x_next[i].numpy(), mean.numpy(), s * (-dt) ** 0.5).mean()
        assert gaussian_log_prob(x_next, step.mean, step.std)[i].item() == pytest.approx(expected, rel=1e-5)


def test_ode_rollout_is_euler_and_sde_keeps_log_probs() -> None:
    model = ToyVelocity()
    grid = sampler_grid(4)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and len(grid) == 5
    ode = rollout(model, None, (2, 1, 2, 2), grid, 0.0, torch.Generator().manual_seed(1), torch.device("cpu"))
    x = torch.randn((2, 1, 2, 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t, tn in zip(grid[:-1], grid[1:], strict=True):
            x = x + (tn - t) * velocity(model, x, t.expand(2), None)
    torch.testing.assert_close(ode.x0, x)
    sde = rollout(model, None, (2, 1, 2, 2), grid, 0.7, torch.Generator().manual_seed(1), torch.device("cpu"),
                  keep_states=True)
    assert sde.states.shape == (5, 2, 1, 2, 2) and sde.log_probs.shape == (4, 2)
    torch.testing.assert_close(sde.states[-1], sde.x0)


def test_group_advantages_centre_each_group() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 10.0, 10.0, 13.0]])
    adv = group_advantages(rewards, group_size=3, global_std=True)
    assert adv.view(2, 3).sum(1).abs().max() < 1e-5
    torch.testing.assert_close(adv[0, :3], torch.tensor([-1.0, 0.0, 1.0]) / (rewards.std() + 1e-4))


def test_ddrl_utility_is_bounded_and_centred_on_the_soft_maximum() -> None:
    rewards = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    u = ddrl_utilities(rewards, 4, beta=1.0)
    z = torch.logsumexp(rewards, 1) - torch.log(torch.tensor(4.0))
    torch.testing.assert_close(u, -torch.exp(-(rewards - z)))
    assert (u < 0).all() and torch.all(u[0, 1:] > u[0, :-1])


SPECS = {
    "flow_grpo": FlowGRPO(kl_beta=0.0, timestep_fraction=1.0),
    "diffusion_nft": DiffusionNFT(kl_beta=0.0, sampler_steps=4),
    "awm": AWM(kl_beta=0.0, ema_kl_beta=0.0, timesteps_per_sample=8),
    "ddrl": DDRL(data_weight=0.0, timesteps_per_sample=8),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_loss_raises_likelihood_of_the_high_reward_sample(name: str) -> None:
    """One gradient step with reward [high, low] makes the high sample more and the low one less likely."""
    model = ToyVelocity()
    algo = make_algorithm(SPECS[name], FlowMatching())
    grid = sampler_grid(4)
    gen = torch.Generator().manual_seed(3)
    batch = rollout(model, None, (2, 1, 2, 2), grid, 0.7 if name == "flow_grpo" else 0.0, gen,
                    torch.device("cpu"), keep_states=algo.keeps_states)
    if name != "flow_grpo":  # forward-process methods train on any clean samples: make them distinct
        batch.x0 = torch.stack([torch.full((1, 2, 2), 0.8), torch.full((1, 2, 2), -0.8)])
    adv = algo.advantages(torch.tensor([[1.0, 0.0]]), group_size=2, global_std=False)
    assert adv[0, 0] > 0 > adv[0, 1]
    anchors = {n: copy.deepcopy(model).requires_grad_(False) for n in algo.anchors}
    nets = Nets(model, None, anchors)
    before = _likelihood(name, model, batch)
    data = (torch.zeros(2, 1, 2, 2), None) if algo.needs_data else None  # DDRL's data term is off here
    parts = algo.losses(nets, batch, adv, torch.Generator().manual_seed(4), data)
    sgd_step(model, parts.reward_losses.sum() + parts.regulariser)
    change = _likelihood(name, model, batch) - before
    assert change[0] > 0 > change[1]


def _likelihood(name: str, model: ToyVelocity, batch) -> torch.Tensor:
    """Flow-GRPO: log-probability of the stored trajectory; forward-process methods: minus the FM error (ELBO)."""
    return _trajectory_log_prob(model, batch) if name == "flow_grpo" else -fm_error(model, batch.x0).detach()


def _trajectory_log_prob(model: ToyVelocity, batch) -> torch.Tensor:
    """Sum over steps of each stored transition's log-probability under `model`."""
    with torch.no_grad():
        total = torch.zeros(batch.states.shape[1])
        for j in range(batch.states.shape[0] - 1):
            t, tn = batch.grid[j].expand(2), batch.grid[j + 1].expand(2)
            x = batch.states[j]
            step = sde_step(x, velocity(model, x, t, None), t, tn, float(batch.grid[1]), 0.7)
            total += gaussian_log_prob(batch.states[j + 1], step.mean, step.std)
    return total


def test_flow_grpo_ratio_is_clipped_off_policy() -> None:
    """Once the policy moved past the clip range, the clipped side carries no gradient."""
    model = ToyVelocity()
    algo = make_algorithm(FlowGRPO(kl_beta=0.0, clip_range=1e-4), FlowMatching())
    batch = rollout(model, None, (2, 1, 2, 2), sampler_grid(4), 0.7, torch.Generator().manual_seed(5),
                    torch.device("cpu"), keep_states=True)
    with torch.no_grad():
        model.b += 0.5
    parts = algo.losses(Nets(model), batch, torch.tensor([[1.0, -1.0]]), torch.Generator())
    assert parts.stats["clip_fraction"] > 0.5

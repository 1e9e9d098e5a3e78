"""Search methods: exact identities with plain sampling, resampling and soft-Bellman backups, bad specs at validate."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

from diffpipe.flows.cli import main
from diffpipe.schemas import FlowMatching
from diffpipe.schemas.search import BestOfN, FKSteering, TreeSearch
from diffpipe.tasks.data.digits_rewards import ink
from diffpipe.tasks.nets import call_image_model
from diffpipe.tasks.rl.rewards import resolve_reward
from diffpipe.tasks.sampling import CountingNet, sample
from diffpipe.tasks.search.fk_steering import effective_sample_size, resample, resampling_steps
from diffpipe.tasks.search.particles import ContinuousProblem
from diffpipe.tasks.search.run import SearchRun
from diffpipe.tasks.search.tree_search import Tree, tree_search


def tiny_net() -> CountingNet:
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                        layers_per_block=1, norm_num_groups=4).eval()
    return CountingNet(lambda x, t, labels: call_image_model(model, x, t, labels))


def test_best_of_one_on_the_ode_is_plain_euler_sampling() -> None:
    net, steps, shape = tiny_net(), 6, (5, 1, 8, 8)
    plain = sample(net, FlowMatching(), FlowMatchEulerDiscreteScheduler(), steps, shape, None,
                   torch.Generator().manual_seed(3), torch.device("cpu"))
    plugin = resolve_reward("ink", "digits", "reward")
    run = SearchRun(BestOfN(reward="ink", particles=1), plugin, Path("."), "stages[1].search")
    searched = sample(net, FlowMatching(), None, steps, shape, None, torch.Generator().manual_seed(3),
                      torch.device("cpu"), run)
    torch.testing.assert_close(searched, plain, rtol=1e-5, atol=1e-5)
    metrics = run.metrics()
    assert metrics["nfe_per_sample"] == steps and metrics["search"] == "best_of_n"
    assert net.costs(5)["flops_per_evaluation"] > 0 and net.rows == 2 * steps * 5


def test_best_of_n_keeps_the_highest_reward_particle_and_costs_n_times_steps() -> None:
    net, steps = tiny_net(), 4
    gen = torch.Generator().manual_seed(0)
    problem = ContinuousProblem(net, (3, 1, 8, 8), None, steps, lambda x, c: ink(x, c, Path(".")),
                                gen, torch.device("cpu"))
    from diffpipe.tasks.search.best_of_n import best_of_n

    result = best_of_n(BestOfN(reward="ink", particles=4, noise_level=0.5), problem)
    assert result.evaluations == 3 * 4 * steps
    torch.testing.assert_close(ink(result.x, None, Path(".")), result.rewards)
    assert result.rewards.mean() >= result.stats["reward_of_all_particles"]


def test_fk_resampling_stays_within_each_condition_and_follows_the_weights() -> None:
    log_w = torch.tensor([[0.0, -math.inf, -math.inf], [-math.inf, -math.inf, 0.0]])
    index = resample(log_w, torch.Generator().manual_seed(0))
    assert index.tolist() == [0, 0, 0, 5, 5, 5]
    assert effective_sample_size(torch.zeros(2, 4)).tolist() == [4.0, 4.0]
    assert effective_sample_size(log_w).tolist() == [1.0, 1.0]
    spec = FKSteering(reward="ink", resample_every=2, resample_start=1, resample_end=7)
    assert resampling_steps(spec, 10) == {2, 4, 6}
    assert max(resampling_steps(FKSteering(reward="ink", resample_every=1), 5)) == 3  # never after the last step


def test_soft_bellman_backup_is_the_visit_weighted_log_mean_exp() -> None:
    tree, lam = Tree(), 2.0
    a = tree.add(0, torch.zeros(1))
    b = tree.add(0, torch.zeros(1))
    tree.backup(a, 1.0, lam)
    tree.backup(b, -1.0, lam)
    tree.backup(a, 1.0, lam)  # a visited twice
    expected = math.log((2 * math.exp(lam * 1.0) + 1 * math.exp(lam * -1.0)) / 3) / lam
    assert tree.visits == [3, 2, 1] and tree.value[0] == pytest.approx(expected)


@pytest.mark.parametrize("variant", ["dts", "dts_star"])
def test_tree_search_spends_at_most_rollouts_times_steps_and_returns_a_leaf(variant: str) -> None:
    net, steps = tiny_net(), 4
    problem = ContinuousProblem(net, (3, 1, 8, 8), None, steps, lambda x, c: ink(x, c, Path(".")),
                                torch.Generator().manual_seed(0), torch.device("cpu"))
    result = tree_search(TreeSearch(reward="ink", variant=variant, rollouts=5, max_children=2), problem)
    assert steps * 3 < result.evaluations <= 5 * steps * 3
    torch.testing.assert_close(ink(result.x, None, Path(".")), result.rewards)


SEARCH_STAGE = {"name": "search", "stage": "sample", "model": "pretrain", "num_samples": 10,
                "scheduler": {"steps": 4}}


@pytest.mark.parametrize(
    ("search", "where"),
    [
        ({"method": "beam_search", "reward": "ink"}, "stages[2].search"),
        ({"method": "particle_gibbs", "reward": "ink"}, "stages[2].search.method"),
        ({"method": "rfg", "reference": "pretrain"}, "stages[2].search.method"),
        ({"method": "best_of_n", "reward": "nosuch"}, "stages[2].search.reward"),
        ({"method": "best_of_n", "reward": "exact_verifier"}, "stages[2].search.reward"),
        ({"method": "tree_search", "reward": "ink", "rollouts": 10**9}, "stages[2].search.rollouts"),
        ({"method": "fk_steering", "reward": "ink", "particles": 10**9}, "stages[2].search.particles"),
        ({"method": "best_of_n", "reward": "ink", "particles": 0}, "stages[2].search.particles"),
    ],
)
def test_search_specs_that_cannot_run_exit_2_at_validate(tiny_spec: dict, tmp_path: Path, search: dict,
                                                         where: str, capsys: pytest.CaptureFixture[str]) -> None:
    raw = copy.deepcopy(tiny_spec)
    raw["stages"].insert(2, {**SEARCH_STAGE, "search": search})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    assert where in capsys.readouterr().err

"""SDPO and TR2-D2: their losses and weights on hand-computed cases, the search's bookkeeping, bad budgets,
one tiny real pipeline each, and an interrupted run that resumes to identical weights."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from mdlm_helpers import rl_rollout_batch, tiny_model
from pydantic import TypeAdapter
from test_mdlm_pipeline import run, tiny_countdown_spec

from diffpipe.flows.cli import main
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.schemas.rl_discrete import DiscreteAlgorithmSpec
from diffpipe.storage.formats import load_tensors, save_tensors
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.data.reasoning import EOS, MASK, build_sudoku, reward_fn_for
from diffpipe.tasks.data.reasoning_domain import token_tensors
from diffpipe.tasks.mdlm.plans import masked_token_logps
from diffpipe.tasks.rl.discrete import Rollouts, make_algorithm
from diffpipe.tasks.rl.discrete.replay import ReplayBuffer
from diffpipe.tasks.rl.discrete.sdpo import sdpo_loss
from diffpipe.tasks.rl.discrete.stage import fine_tune_discrete, summary_metrics
from diffpipe.tasks.rl.discrete.tr2d2 import (
    SearchRollouts,
    StepSchedule,
    buffer_weights,
    tree_search,
    wdce_plan,
)

SDPO = {"algorithm": "sdpo", "num_iterations": 2, "block_length": 4}
TR2D2 = {"algorithm": "tr2d2", "num_iterations": 2, "block_length": 4, "mcts_iterations": 2, "num_children": 2,
         "num_replicates": 2}


def spec_of(options: dict):
    """The algorithm's schema object."""
    return TypeAdapter(DiscreteAlgorithmSpec).validate_python(options)


def test_sdpo_loss_by_hand_and_its_dpo_limit() -> None:
    # targets softmax(0, 0, ln 2) = (1/4, 1/4, 1/2): loss = logsumexp(1, 2, 3) - (1/4 + 2/4 + 3/2)
    implicit = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, math.log(2)]], dtype=torch.float64)
    expected = 3 + math.log(1 + math.exp(-1) + math.exp(-2)) - 2.25
    assert float(sdpo_loss(implicit, rewards)) == pytest.approx(expected, rel=1e-12)
    # two completions, all target mass on the first: -log sigmoid(r~_w - r~_l), the DPO loss
    pair = torch.tensor([[0.7, -0.4]], dtype=torch.float64)
    one_hot = torch.tensor([[0.0, -math.inf]], dtype=torch.float64)
    assert float(sdpo_loss(pair, one_hot)) == pytest.approx(math.log1p(math.exp(-1.1)), rel=1e-12)
    # equal rewards and a policy equal to the reference: no gradient
    flat = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    sdpo_loss(flat, torch.ones(2, 3)).backward()
    assert float(flat.grad.abs().max()) < 1e-15


def _rollouts(group_size: int = 3) -> Rollouts:
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 21, (2, 3), generator=gen).repeat_interleave(group_size, 0)
    completion = torch.randint(3, 21, (2 * group_size, 4), generator=gen)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 1.0])[: 2 * group_size]
    return Rollouts(prompt, completion, rewards, rewards > 0.9, group_size)


def test_sdpo_implicit_reward_is_beta_t_times_the_masked_log_ratio() -> None:
    policy, reference = tiny_model(seed=1), tiny_model(seed=2)
    algo = make_algorithm(spec_of({**SDPO, "beta": 0.5}), MASK, EOS)
    batch = _rollouts()
    plan = algo.draw_plan(batch, torch.Generator().manual_seed(3))
    t = plan.weights[0] / 0.5
    assert torch.equal(plan.masks[0].sum(1), torch.ceil(t * 4).long().clamp(1, 4))
    assert torch.equal(t[:3], t[:1].expand(3)) and torch.equal(t[3:], t[3:4].expand(3))  # one t per prompt
    implicit = algo.surrogate(policy, batch, plan) - algo.surrogate(reference, batch, plan)
    ratio = (masked_token_logps(policy, batch.prompt, batch.completion, plan, MASK)
             - masked_token_logps(reference, batch.prompt, batch.completion, plan, MASK))[0]
    torch.testing.assert_close(implicit, 0.5 * t * (ratio * plan.masks[0]).sum(1))
    constant = make_algorithm(spec_of({**SDPO, "beta": 0.5, "beta_schedule": "constant"}), MASK, EOS)
    assert torch.equal(constant.draw_plan(batch, torch.Generator()).weights, torch.full((1, 6), 0.5))


def _offer(buffer: ReplayBuffer, prompt: int, completions: list[list[int]], rewards: list[float],
           log_rnd: list[float]) -> None:
    n = len(completions)
    rewards_ = torch.tensor(rewards, dtype=torch.float64)
    buffer.add(torch.full((n, 1), prompt), torch.tensor(completions), rewards_, torch.tensor(log_rnd), rewards_ > 0.8)


def _entries(buffer: ReplayBuffer, prompt: int) -> list[tuple[tuple[int, ...], float, float]]:
    return [(e.completion, e.reward, e.log_rnd) for e in buffer.entries[(prompt,)]]


def test_replay_buffer_keeps_the_top_distinct_completions_across_searches() -> None:
    buffer = ReplayBuffer(capacity=2)
    _offer(buffer, 7, [[3, 4], [3, 4], [5, 6], [7, 8]], [0.5, 0.9, 0.9, 0.1], [0.0, 1.0, 2.0, 3.0])
    # the duplicate [3, 4] is rejected even with a higher reward; [7, 8] is below both entries
    assert _entries(buffer, 7) == [((3, 4), 0.5, 0.0), ((5, 6), 0.9, 2.0)]
    _offer(buffer, 9, [[3, 4]], [0.2], [0.0])  # another prompt has its own buffer
    _offer(buffer, 7, [[1, 1], [2, 2], [4, 4]], [0.9, 0.9, float("nan")], [1.5, 1.0, 9.0])
    # a later search: (0.9, 1.5) replaces the weakest (0.5, 0.0); (0.9, 1.0) then loses to both; NaN rejected
    assert _entries(buffer, 7) == [((1, 1), 0.9, 1.5), ((5, 6), 0.9, 2.0)]
    assert _entries(buffer, 9) == [((3, 4), 0.2, 0.0)] and len(buffer) == 3
    batch = buffer.batch(torch.tensor([[9], [7]]))
    assert batch.completion.tolist() == [[3, 4], [3, 4], [1, 1], [5, 6]]
    assert batch.filled.tolist() == [True, False, True, True]
    buffer.forget(torch.tensor([[7]]))
    assert list(buffer.entries) == [(9,)]


def test_replay_buffer_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    buffer = ReplayBuffer(capacity=3)
    _offer(buffer, 7, [[3, 4], [5, 6]], [0.5, 0.9], [0.25, -1.0])
    _offer(buffer, 2, [[1, 2]], [1.0], [3.0])
    save_tensors(buffer.state_dict(), tmp_path / "buffer.safetensors")
    restored = ReplayBuffer(capacity=3)
    restored.load_state_dict(load_tensors(tmp_path / "buffer.safetensors"))
    assert restored.entries == buffer.entries and list(restored.entries) == [(7,), (2,)]


def test_buffer_weights_by_hand() -> None:
    log_rnd = torch.tensor([[0.0, math.log(3), 5.0]])
    keep = torch.tensor([[True, True, False]])
    torch.testing.assert_close(buffer_weights(log_rnd, keep, centering=False), torch.tensor([[0.25, 0.75, 0.0]]))
    torch.testing.assert_close(buffer_weights(log_rnd, keep, centering=True), torch.tensor([[-0.25, 0.25, 0.0]]))


def _parity(prompts: torch.Tensor, completions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rewards = (completions % 2 == 0).float().mean(dim=1)
    return rewards, rewards > 0.5


def test_log_rnd_of_one_step_by_hand() -> None:
    """One masked token: log RND = log p_pre(y) - log softmax(logits / T)(y) + min(r, clip) / alpha."""
    policy, pretrained = tiny_model(seed=3, max_length=6), tiny_model(seed=4, max_length=6)
    spec = spec_of({**TR2D2, "mcts_iterations": 1, "num_children": 6, "temperature": 1.7, "alpha": 0.25,
                    "reward_clip": 0.5})
    prompt = torch.randint(3, 21, (1, 4), generator=torch.Generator().manual_seed(1))
    search = tree_search(policy, pretrained, prompt, _parity, spec, StepSchedule.of(1, 1, None), MASK,
                         torch.Generator().manual_seed(0))
    masked = torch.cat([prompt, torch.tensor([[MASK]])], dim=1)
    with torch.no_grad():
        log_v = torch.log_softmax(policy(masked)[0, -1].double() / 1.7, dim=-1)
        log_pre = torch.log_softmax(pretrained(masked)[0, -1].double(), dim=-1)
    y = search.completions[:, 0]
    expected = log_pre[y] - log_v[y] + _parity(None, search.completions)[0].double().clamp(max=0.5) / 0.25
    torch.testing.assert_close(search.log_rnd, expected, rtol=1e-9, atol=1e-9)
    assert [c.log_p for c in search.root.children] == pytest.approx(log_v[y].tolist())


def test_log_rnd_is_the_reward_alone_when_the_policy_is_the_pretrained_model() -> None:
    """At temperature 1 every step's two log-probabilities cancel exactly, whatever the path."""
    model = tiny_model(seed=5, max_length=10)
    spec = spec_of({**TR2D2, "mcts_iterations": 3, "num_children": 2, "alpha": 0.1})
    search = tree_search(model, model, torch.randint(3, 21, (1, 4)), _parity, spec, StepSchedule.of(6, 4, 3), MASK,
                         torch.Generator().manual_seed(0))
    torch.testing.assert_close(search.log_rnd, search.rewards.double() / 0.1, rtol=0, atol=1e-12)


def test_step_schedule_splits_each_block_evenly() -> None:
    assert StepSchedule.of(7, 4, 4).steps == ((0, 4, 2), (0, 4, 2), (4, 7, 2), (4, 7, 1))
    assert StepSchedule.of(7, 4, 4).length == 7


def test_prepare_trains_on_the_buffer_and_keeps_it_across_rounds() -> None:
    model = tiny_model(seed=3, max_length=10)
    prompts = torch.tensor([[5, 6, 7, 8]])

    def round_of(algo, completions: list[list[int]], rewards: list[float]):
        n = len(completions)
        rollouts = SearchRollouts(prompts.expand(n, -1), torch.tensor(completions), torch.tensor(rewards),
                                  torch.zeros(n, dtype=torch.bool), n, torch.tensor(rewards, dtype=torch.float64))
        return algo.prepare(model, model, rollouts, torch.Generator().manual_seed(0))

    kept = make_algorithm(spec_of({**TR2D2, "buffer_size": 3}), MASK, EOS)
    round_of(kept, [[3, 3], [4, 4]], [0.9, 0.1])
    prepared = round_of(kept, [[5, 5], [6, 6]], [0.5, 0.2])
    assert prepared.rows.completion.tolist() == [[3, 3], [6, 6], [5, 5]]  # (4, 4) was the weakest of four
    weights = torch.softmax(torch.tensor([0.9, 0.2, 0.5]), 0)
    torch.testing.assert_close(prepared.signal, ((weights - weights.mean()) / 3).float())
    fresh = make_algorithm(spec_of({**TR2D2, "buffer_size": 3, "keep_buffer": False}), MASK, EOS)
    round_of(fresh, [[3, 3], [4, 4]], [0.9, 0.1])
    prepared = round_of(fresh, [[5, 5], [6, 6]], [0.5, 0.2])
    assert prepared.rows.completion.tolist() == [[5, 5], [6, 6], [5, 5]]
    assert prepared.filled.tolist() == [True, True, False] and float(prepared.signal[2]) == 0.0
    loss, stats = fresh.loss(model, None, prepared, 0)
    assert math.isfinite(float(loss.detach())) and stats["buffer_reward"] == pytest.approx(0.35)


def test_wdce_weights_are_inverse_mask_ratios() -> None:
    gen = torch.Generator().manual_seed(0)
    plan = wdce_plan(3, 50, 4, gen)
    ratios = torch.rand(4, 3, 1, generator=torch.Generator().manual_seed(0)).squeeze(-1)
    torch.testing.assert_close(plan.weights * 4 * ratios, torch.ones(4, 3))
    assert abs(float(plan.masks.float().mean(-1).sub(ratios).abs().max())) < 0.25


def test_tree_search_spends_its_budget_and_backs_up_every_reward() -> None:
    model = tiny_model(seed=3, max_length=10).eval()
    spec = spec_of({**TR2D2, "mcts_iterations": 3, "num_children": 2})
    schedule = StepSchedule.of(6, 6, 3)

    def reward_fn(prompts: torch.Tensor, completions: torch.Tensor):
        rewards = (completions % 2 == 0).float().mean(dim=1)
        return rewards, rewards > 0.5

    search = tree_search(model, tiny_model(seed=4, max_length=10), torch.randint(3, 21, (1, 4)), reward_fn, spec,
                         schedule, MASK, torch.Generator().manual_seed(0))
    assert search.completions.shape == (6, 6) and not (search.completions == MASK).any()
    assert search.root.visits == 6
    assert search.root.value == pytest.approx(float(search.rewards.sum()))
    torch.testing.assert_close(search.rewards, reward_fn(None, search.completions)[0])
    expanded, stack = [], [search.root]
    while stack:
        node = stack.pop()
        if node.children:
            expanded.append(node)
            own = node is not search.root  # a child's own rollout is its first visit
            assert node.visits == own + sum(c.visits for c in node.children)
            assert all(c.depth == node.depth + 1 for c in node.children)
        stack += node.children
    assert sorted(len(n.children) for n in expanded) == [2, 2, 2]  # three expansions of two children each


@pytest.mark.parametrize(("change", "expected"), [
    ({"num_children": 3}, ("algorithm.num_children", "group_size (4)")),  # 2 x 3 = 6 evaluations > group_size 4
    ({"temperature": 0.0}, ("algorithm.temperature", "greater than 0")),  # the weights divide by a sampler density
])
def test_bad_tr2d2_options_exit_2(tmp_path: Path, capsys, change: dict, expected: tuple[str, str]) -> None:
    raw = tiny_countdown_spec(tmp_path / "artifacts")
    rl = next(s for s in raw["stages"] if s["name"] == "rl")
    rl["algorithm"] = {**TR2D2, **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in expected), err


@pytest.mark.parametrize("algorithm", [SDPO, TR2D2])
def test_tiny_pipeline_end_to_end(tmp_path: Path, prefect_api, algorithm: dict) -> None:
    raw = tiny_countdown_spec(tmp_path / "artifacts")
    next(s for s in raw["stages"] if s["name"] == "rl")["algorithm"] = copy.deepcopy(algorithm)
    states = run(raw)
    metrics = states["rl"]["metrics"]
    assert states["rl"]["state"] == "executed" and metrics["algorithm"] == algorithm["algorithm"]
    # 8 steps at mu = 2: 4 rollout batches of 2 prompts x 4 reward evaluations
    assert metrics["rollout_batches"] == 4 and metrics["samples_generated"] == 32
    assert 0.0 <= states["evaluate"]["metrics"]["model"]["accuracy"] <= 1.0


@pytest.mark.parametrize("algorithm", [SDPO, TR2D2])
def test_one_update_on_sudoku_with_its_exact_verifier(algorithm: dict) -> None:
    ds = build_sudoku(8, 4, seed=0)["train"]
    prompts, _ = token_tensors(ds)
    model = tiny_model(seed=6, max_length=32)
    before = [p.detach().clone() for p in model.parameters()]
    state, losses = rl_rollout_batch(model, copy.deepcopy(algorithm), prompts[:2], reward_fn_for("sudoku"),
                                     completion_length=16)
    stats = summary_metrics(state)
    assert stats["samples_generated"] == 8 and 0.0 <= stats["train_reward"]["first"] <= 1.0
    assert all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)) or (
        stats["zero_std_ratio"] == 1.0)


class Interrupt(Exception):
    """Raised by the hook to stop a run after its first checkpoint."""


def _fine_tune(raw: dict, root: Path, stop_at: int | None = None) -> dict[str, torch.Tensor]:
    """Run the pipeline up to pretrain, then the rl stage in-process (interrupted at `stop_at`); its weights."""
    spec = validate_spec(copy.deepcopy(raw))
    states = run({**raw, "stages": raw["stages"][:1]})
    from diffpipe.storage import ArtifactStore

    store = ArtifactStore(spec.storage.root)
    refs = {"data": store.lookup(states["data"]["cache_key"]), "init": store.lookup(states["pretrain"]["cache_key"])}

    def hook(step: int, _run) -> None:
        if step == stop_at:
            raise Interrupt

    ctx = StageContext(spec, "rl", "rl-resume-test", refs, store, root, progress=False)
    done = fine_tune_discrete(ctx, spec.stage("rl"), hook)
    weights = {k: v.detach().clone() for k, v in done.policy.state_dict().items()}
    return weights | {f"state.{k}": v.clone() for k, v in done.state.state_dict().items() if k != "log"}


@pytest.mark.parametrize("algorithm", [SDPO, TR2D2])
def test_interrupted_run_resumes_to_identical_weights(tmp_path: Path, prefect_api, algorithm: dict) -> None:
    raw = tiny_countdown_spec(tmp_path / "artifacts")
    rl = next(s for s in raw["stages"] if s["name"] == "rl")
    rl.update(algorithm=copy.deepcopy(algorithm), steps=6, checkpoint_every=2)
    straight = _fine_tune(raw, tmp_path / "a")
    from diffpipe.storage import ArtifactStore

    ArtifactStore(raw["storage"]["root"]).clear_run("rl-resume-test")
    with pytest.raises(Interrupt):
        _fine_tune(raw, tmp_path / "b", stop_at=4)
    resumed = _fine_tune(raw, tmp_path / "c")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)
    if algorithm["algorithm"] == "tr2d2":  # the replay buffer was restored: it holds all 3 rounds' prompts
        assert len({tuple(p) for p in resumed["state.algorithm.prompts"].tolist()}) > rl["groups_per_step"]

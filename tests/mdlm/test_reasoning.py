"""Countdown and Sudoku generators: verifiers against brute force, splits, tokens."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from diffpipe.errors import DataError, SpecError
from diffpipe.tasks.data.reasoning import (
    EOS,
    VOCAB,
    all_countdown_expressions,
    all_sudoku_grids,
    build_countdown,
    build_sudoku,
    check_reasoning_dataset,
    closeness_completions,
    countdown_closeness,
    countdown_key,
    countdown_problem_counts,
    countdown_reward,
    parse_countdown_prompt,
    reward_fn_for,
    score_completions,
    sudoku_puzzle_counts,
    sudoku_reward,
    sudoku_solutions,
    unique_puzzles_by_blanks,
    verify_countdown,
    verify_sudoku,
)
from diffpipe.tasks.rl.rewards import resolve_reward


@pytest.fixture(scope="module")
def countdown():
    return build_countdown(60, 20, num_numbers=(3, 4), max_number=6, seed=3)


@pytest.fixture(scope="module")
def sudoku():
    return build_sudoku(150, 50, seed=3)


def test_countdown_verifier_agrees_with_brute_force_on_every_problem(countdown):
    for ds in countdown.values():
        for numbers, target in zip(ds.numbers.values, ds.target.values, strict=True):
            numbers = [int(n) for n in numbers if n >= 0]
            if len(numbers) == 4:  # 7680 expressions: check a stride of them to stay fast
                expressions = all_countdown_expressions(numbers)[::7]
            else:
                expressions = all_countdown_expressions(numbers)
            hits = 0
            for expr in expressions:
                is_solution = expr.value == target
                hits += is_solution
                assert verify_countdown(expr.render(), numbers, int(target)) == is_solution, expr.render()
            if len(numbers) == 3:
                assert hits > 0


def test_countdown_verifier_rejects_wrong_number_use_and_bad_syntax():
    assert verify_countdown("3+5*2", [3, 5, 2], 13)
    assert not verify_countdown("3+5", [3, 5, 2], 8)            # a number left out
    assert not verify_countdown("3+5+2+2", [3, 5, 2], 12)       # a number used twice
    assert not verify_countdown("(3+5*2", [3, 5, 2], 13)        # unbalanced
    assert not verify_countdown("6/(3-3)", [6, 3, 3], 1)        # division by zero
    assert verify_countdown("6/4*2", [6, 4, 2], 3)              # exact rationals in between
    assert not verify_countdown("03+5*2", [3, 5, 2], 13)        # leading zero
    assert countdown_reward("3+5", [3, 5, 2], 13) == 0.1
    assert countdown_reward("3+", [3, 5, 2], 13) == 0.0


def test_countdown_closeness_is_exact_relative_distance_over_the_given_numbers():
    assert countdown_closeness("3+5*2", [3, 5, 2], 13) == 1.0      # correct
    assert countdown_closeness("3+5+2", [3, 5, 2], 20) == 0.5      # half the target away
    assert countdown_closeness("6/4*2", [6, 4, 2], 6) == 0.5       # exact rationals: 3 against 6
    assert countdown_closeness("3*5*2", [3, 5, 2], 10) == 0.0      # twice the target or more: floored
    assert countdown_closeness("3+5", [3, 5, 2], 8) == 0.0         # a number left out
    assert countdown_closeness("3+", [3, 5, 2], 8) == 0.0          # does not parse


def test_closeness_reward_scores_token_arrays_and_applies_to_countdown_only(countdown):
    test = countdown["test"]
    prompts, completions = test.prompt.values, test.completion.values
    assert (closeness_completions(prompts, completions) == 1.0).all()  # reference solutions are exact
    plugin = resolve_reward("countdown_closeness", "countdown", "stages[0].rewards[1].name")
    wrong = np.roll(completions, 1, axis=0)  # another problem's solution: rarely right, never scored above 1
    scores = plugin.fn(torch.from_numpy(wrong), torch.from_numpy(prompts), Path("unused"))
    expected = [countdown_closeness(VOCAB.decode(c), *parse_countdown_prompt(VOCAB.decode(p)))
                for p, c in zip(prompts, wrong, strict=True)]
    assert scores.tolist() == pytest.approx(expected) and ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(SpecError, match="does not apply to sudoku"):
        resolve_reward("countdown_closeness", "sudoku", "stages[0].rewards[1].name")


def test_countdown_completions_are_solutions_and_tokens_round_trip(countdown):
    for ds in countdown.values():
        check_reasoning_dataset(ds, "countdown")
        rewards, correct = score_completions("countdown", ds.prompt.values, ds.completion.values)
        assert correct.all() and (rewards == 1.0).all()
        assert (ds.completion.values[:, -1] == EOS).all()


def test_countdown_splits_are_disjoint_and_deterministic(countdown):
    keys = {split: {countdown_key([n for n in nums if n >= 0], t) for nums, t in
                    zip(ds.numbers.values, ds.target.values, strict=True)} for split, ds in countdown.items()}
    assert len(keys["train"]) == 60 and len(keys["test"]) == 20
    assert not keys["train"] & keys["test"]
    again = build_countdown(60, 20, num_numbers=(3, 4), max_number=6, seed=3)
    assert (again["test"].prompt.values == countdown["test"].prompt.values).all()


def test_there_are_288_sudoku_grids_and_all_are_valid():
    grids = all_sudoku_grids()
    assert grids.shape == (288, 16) and len({tuple(g) for g in grids}) == 288
    assert all(verify_sudoku("".join(map(str, g)), [0] * 16) for g in grids)


def test_sudoku_verifier_agrees_with_brute_force_on_every_puzzle(sudoku):
    grids = all_sudoku_grids()
    for ds in sudoku.values():
        for puzzle, solution in zip(ds.puzzle.values, ds.solution.values, strict=True):
            accepted = [verify_sudoku("".join(map(str, g)), puzzle) for g in grids]
            assert sum(accepted) == 1 and len(sudoku_solutions(puzzle)) == 1
            assert (grids[int(np.argmax(accepted))] == solution).all()
            assert sudoku_reward("".join(map(str, solution)), puzzle) == 1.0


def test_sudoku_splits_never_share_a_solution_grid(sudoku):
    grids = {split: {tuple(s) for s in ds.solution.values} for split, ds in sudoku.items()}
    assert not grids["train"] & grids["test"]
    assert len({tuple(p) for p in sudoku["train"].puzzle.values}) == 150


def test_reward_fn_scores_token_tensors(sudoku):
    ds = sudoku["test"]
    prompts, completions = torch.from_numpy(ds.prompt.values), torch.from_numpy(ds.completion.values)
    wrong = completions.clone()
    wrong[:, :] = torch.from_numpy(VOCAB.encode("1" * 16, 16, EOS))[None]
    rewards, correct = reward_fn_for("sudoku")(prompts, completions)
    assert correct.all() and torch.allclose(rewards, torch.ones_like(rewards))
    rewards, correct = reward_fn_for("sudoku")(prompts, wrong)
    assert not correct.any() and (rewards < 1).all()


def test_bad_dataset_raises_data_error(sudoku):
    with pytest.raises(DataError, match="completion"):
        check_reasoning_dataset(sudoku["test"].drop_vars("completion"), "sudoku.zarr")


def test_countdown_problem_counts_are_exact_and_the_build_meets_them():
    """The split sizes `validate` checks against are reachable: asking for every problem of both splits builds."""
    counts = countdown_problem_counts([3], 4, 20, 0.25)
    splits = build_countdown(counts["train"], counts["test"], max_number=4, max_target=20, test_fraction=0.25)
    assert {s: ds.sizes["problem"] for s, ds in splits.items()} == counts
    with pytest.raises(DataError, match="not enough distinct problems"):
        build_countdown(counts["train"] + 1, 1, max_number=4, max_target=20, test_fraction=0.25)
    assert countdown_problem_counts([4], 30, 99, 0.2) is None  # too many to enumerate at validate


def test_sudoku_puzzle_counts_agree_with_brute_force():
    """Per grid, the uniquely solvable patterns of 11 and 12 blanks, against trying every pattern; a split's count
    is the sum over its grids."""
    import itertools

    grids = all_sudoku_grids()
    for grid in grids[::140]:
        counts = unique_puzzles_by_blanks(grid)
        for b in (11, 12):
            unique = 0
            for blanks in itertools.combinations(range(16), b):
                puzzle = grid.copy()
                puzzle[list(blanks)] = 0
                unique += len(sudoku_solutions(puzzle)) == 1
            assert counts[b] == unique > 0
        assert counts[0] == 1 and counts[13:].sum() == 0  # at least 4 givens (the known minimum for 4x4)
    split = sudoku_puzzle_counts(11, 12, 0.2)
    assert sum(split.values()) == sum(int(unique_puzzles_by_blanks(g)[11:13].sum()) for g in grids)

"""Verifiable reasoning tasks for masked-diffusion LMs: Countdown and 4x4 Sudoku.

Every problem has an exact verifier (rational arithmetic for Countdown, grid rules for Sudoku), a
brute-force solver the verifier is tested against, and a character vocabulary with fixed prompt and
completion lengths. Splits are assigned by a hash of the problem's identity, so train and test never
share a problem (Countdown: the multiset of numbers with the target; Sudoku: the solution grid).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
import xarray as xr

from diffpipe.errors import DataError

from ..context import ProgressBars, no_progress

PAD, MASK, EOS = 0, 1, 2
SYMBOLS = "0123456789+-*/()=,"
TOKENS = ("<pad>", "<mask>", "<eos>", *SYMBOLS)
OPERATORS = "+-*/"
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class CharVocab:
    """Character vocabulary with pad, mask and end-of-sequence tokens (ids 0, 1, 2)."""

    tokens: tuple[str, ...] = TOKENS

    @property
    def size(self) -> int:
        """Number of token ids."""
        return len(self.tokens)

    def encode(self, text: str, length: int, fill: int) -> np.ndarray:
        """Token ids of `text`, then `fill` up to `length`; raises DataError when it does not fit."""
        lookup = {tok: i for i, tok in enumerate(self.tokens)}
        if len(text) > length or any(ch not in lookup for ch in text):
            raise DataError("tokenizer", "text does not fit the vocabulary or length",
                            expected=f"<= {length} chars from {SYMBOLS!r}", found=repr(text))
        ids = np.full(length, fill, dtype=np.int64)
        ids[: len(text)] = [lookup[ch] for ch in text]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids up to the first end-of-sequence; pad is skipped, mask shows as '?'."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i != PAD:
                out.append("?" if i == MASK else self.tokens[i])
        return "".join(out)


VOCAB = CharVocab()


# ----------------------------------------------------------------------------------------- Countdown


@dataclass(frozen=True)
class Expr:
    """A binary expression tree over integers (a leaf has op None)."""

    op: str | None
    value: Fraction | None
    left: Expr | None = None
    right: Expr | None = None
    leaf: int | None = None

    def render(self) -> str:
        """Infix text with only the parentheses precedence needs."""
        if self.op is None:
            return str(self.leaf)
        left, right = self.left.render(), self.right.render()
        if self.left.op is not None and PRECEDENCE[self.left.op] < PRECEDENCE[self.op]:
            left = f"({left})"
        if self.right.op is not None and (PRECEDENCE[self.right.op] < PRECEDENCE[self.op]
                                          or (PRECEDENCE[self.right.op] == PRECEDENCE[self.op]
                                              and self.op in "-/")):
            right = f"({right})"
        return f"{left}{self.op}{right}"


def _combine(op: str, a: Expr, b: Expr) -> Expr:
    """Node op(a, b) with its exact value (None when it divides by zero)."""
    if a.value is None or b.value is None:
        value = None
    elif op == "+":
        value = a.value + b.value
    elif op == "-":
        value = a.value - b.value
    elif op == "*":
        value = a.value * b.value
    else:
        value = None if b.value == 0 else a.value / b.value
    return Expr(op, value, a, b)


def _trees(leaves: tuple[int, ...]) -> Iterator[Expr]:
    """Every binary tree with the leaves in this order and every operator at each node."""
    if len(leaves) == 1:
        yield Expr(None, Fraction(leaves[0]), leaf=leaves[0])
        return
    for split in range(1, len(leaves)):
        for left in _trees(leaves[:split]):
            for right in _trees(leaves[split:]):
                for op in OPERATORS:
                    yield _combine(op, left, right)


def all_countdown_expressions(numbers: Sequence[int]) -> tuple[Expr, ...]:
    """Every expression using each number exactly once (all orders, shapes and operators)."""
    return _expressions(tuple(sorted(numbers)))


@lru_cache(maxsize=256)
def _expressions(sorted_numbers: tuple[int, ...]) -> tuple[Expr, ...]:
    """All expressions over a multiset of numbers (cached: 192 for three numbers, 7680 for four)."""
    orders = sorted(set(itertools.permutations(sorted_numbers)))
    return tuple(tree for order in orders for tree in _trees(order))


def solve_countdown(numbers: Sequence[int], target: int) -> list[str]:
    """Brute force: the distinct texts of all expressions over the numbers that equal the target."""
    return sorted({e.render() for e in all_countdown_expressions(numbers) if e.value == target})


@lru_cache(maxsize=4096)
def _reachable_targets(sorted_numbers: tuple[int, ...]) -> tuple[int, ...]:
    """Positive integers some expression over these numbers equals (brute force, cached per multiset)."""
    values = {e.value for e in all_countdown_expressions(sorted_numbers)}
    return tuple(sorted(int(v) for v in values if v is not None and v.denominator == 1 and v >= 1))


class _Parser:
    """Recursive-descent parser for + - * / with parentheses over non-negative integers."""

    def __init__(self, text: str):
        self.text, self.pos, self.numbers = text, 0, []

    def parse(self) -> Fraction | None:
        """Exact value of the whole text (None on a syntax error or division by zero)."""
        try:
            value = self._expr()
        except (ValueError, ZeroDivisionError):
            return None
        return value if self.pos == len(self.text) else None

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _expr(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self.text[self.pos]
            self.pos += 1
            value = value + self._term() if op == "+" else value - self._term()
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while self._peek() in ("*", "/"):
            op = self.text[self.pos]
            self.pos += 1
            value = value * self._factor() if op == "*" else value / self._factor()
        return value

    def _factor(self) -> Fraction:
        if self._peek() == "(":
            self.pos += 1
            value = self._expr()
            if self._peek() != ")":
                raise ValueError("unclosed parenthesis")
            self.pos += 1
            return value
        start = self.pos
        while self._peek().isdigit():
            self.pos += 1
        digits = self.text[start:self.pos]
        if not digits or (len(digits) > 1 and digits[0] == "0"):
            raise ValueError("number expected")
        self.numbers.append(int(digits))
        return Fraction(int(digits))


def parse_countdown(text: str) -> tuple[Fraction | None, list[int]]:
    """Exact value of an arithmetic answer and the numbers it uses (value None when it does not parse)."""
    parser = _Parser(text)
    value = parser.parse()
    return value, parser.numbers


def verify_countdown(text: str, numbers: Sequence[int], target: int) -> bool:
    """True when the answer uses each given number exactly once and equals the target exactly."""
    value, used = parse_countdown(text)
    return value is not None and sorted(used) == sorted(numbers) and value == target


def countdown_reward(text: str, numbers: Sequence[int], target: int) -> float:
    """d1's Countdown reward: 1.0 correct, 0.1 for a well-formed but wrong answer, 0.0 otherwise."""
    if verify_countdown(text, numbers, target):
        return 1.0
    return 0.1 if parse_countdown(text)[0] is not None else 0.0


def countdown_closeness(text: str, numbers: Sequence[int], target: int) -> float:
    """How near a well-formed answer over exactly the given numbers lands: 1 - |value - target| / target,
    floored at 0 (1.0 when correct); 0.0 for an answer that does not parse or uses other numbers."""
    value, used = parse_countdown(text)
    if value is None or sorted(used) != sorted(numbers):
        return 0.0
    return float(max(Fraction(0), 1 - abs(value - target) / target))


def closeness_completions(prompts: np.ndarray, completions: np.ndarray) -> np.ndarray:
    """`countdown_closeness` of Countdown completions given token arrays of their prompts."""
    return np.array([countdown_closeness(VOCAB.decode(c), *parse_countdown_prompt(VOCAB.decode(p)))
                     for p, c in zip(np.asarray(prompts), np.asarray(completions), strict=True)], dtype=np.float64)


def countdown_lengths(num_numbers: int, max_number: int, max_target: int) -> tuple[int, int]:
    """Fixed (prompt, completion) lengths: digits, commas, '=', target; digits, ops, parentheses, EOS."""
    digits = len(str(max_number))
    prompt = num_numbers * digits + (num_numbers - 1) + 1 + len(str(max_target))
    completion = num_numbers * digits + (num_numbers - 1) + 2 * (num_numbers - 2) + 1
    return prompt, completion


def _split_of(key: str, test_fraction: float) -> str:
    """'test' or 'train', a pure function of the problem's identity."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_fraction else "train"


def _random_countdown(rng: np.random.Generator, num_numbers: int, max_number: int,
                      max_target: int) -> tuple[tuple[int, ...], int] | None:
    """Random numbers and a target drawn uniformly from those they reach (None when none is in range)."""
    numbers = tuple(int(x) for x in rng.integers(1, max_number + 1, size=num_numbers))
    targets = [t for t in _reachable_targets(tuple(sorted(numbers))) if t <= max_target]
    return (numbers, targets[int(rng.integers(len(targets)))]) if targets else None


def countdown_key(numbers: Sequence[int], target: int) -> str:
    """Identity of a Countdown problem: the sorted numbers and the target."""
    return f"{sorted(numbers)}={target}"


def build_countdown(num_train: int, num_test: int, *, num_numbers: Sequence[int] = (3,), max_number: int = 9,
                    max_target: int = 99, test_fraction: float = 0.2, seed: int = 0,
                    bars: ProgressBars = no_progress) -> dict[str, xr.Dataset]:
    """Countdown train/test sets as token arrays plus numbers, targets and solution counts; `bars` shows the
    distinct problems found."""
    width = max(num_numbers)
    prompt_len, completion_len = countdown_lengths(width, max_number, max_target)
    wanted = {"train": num_train, "test": num_test}
    found: dict[str, dict[str, tuple[tuple[int, ...], int]]] = {"train": {}, "test": {}}
    rng = np.random.default_rng(seed)
    with bars("problems", num_train + num_test) as advance:
        for _ in range(200 * (num_train + num_test) + 1000):
            if all(len(found[s]) >= wanted[s] for s in wanted):
                break
            problem = _random_countdown(rng, int(rng.choice(num_numbers)), max_number, max_target)
            if problem is None:
                continue
            key = countdown_key(*problem)
            split = _split_of(key, test_fraction)
            if len(found[split]) < wanted[split] and key not in found[split]:
                found[split][key] = problem
                advance(1)
    for split, problems in found.items():
        if len(problems) < wanted[split]:
            raise DataError(f"countdown {split} split", "not enough distinct problems",
                            expected=str(wanted[split]), found=str(len(problems)))
    return {split: _countdown_dataset(list(problems.values()), split, width, prompt_len, completion_len, rng)
            for split, problems in found.items()}


COUNTING_BUDGET = 250_000
"""Most expressions `countdown_problem_counts` evaluates (about a second on one core)."""


def countdown_problem_counts(num_numbers: Sequence[int], max_number: int, max_target: int,
                             test_fraction: float) -> dict[str, int] | None:
    """Distinct problems of each split, exactly: every multiset of numbers with every target in 1..max_target it
    reaches, assigned to a split by its hash as `build_countdown` assigns it. None when that enumeration would
    evaluate more than COUNTING_BUDGET expressions (k numbers: at most k! Catalan(k-1) 4^(k-1) each)."""
    sizes = set(num_numbers)
    if sum(math.comb(max_number + k - 1, k) * _most_expressions(k) for k in sizes) > COUNTING_BUDGET:
        return None
    counts = {"train": 0, "test": 0}
    for k in sizes:
        for numbers in itertools.combinations_with_replacement(range(1, max_number + 1), k):
            for target in _reachable_targets(numbers):
                if target <= max_target:
                    counts[_split_of(countdown_key(numbers, target), test_fraction)] += 1
    return counts


def _most_expressions(k: int) -> int:
    """Expressions over k distinct numbers: k! orders, Catalan(k - 1) tree shapes, an operator per inner node."""
    return math.factorial(k) * math.comb(2 * k - 2, k - 1) // k * len(OPERATORS) ** (k - 1)


def _countdown_dataset(problems: list[tuple[tuple[int, ...], int]], split: str, width: int, prompt_len: int,
                       completion_len: int, rng: np.random.Generator) -> xr.Dataset:
    """Token arrays of Countdown problems; the completion is one brute-force solution chosen at random."""
    prompts, completions, numbers, targets, counts = [], [], [], [], []
    for nums, target in problems:
        solutions = solve_countdown(nums, target)
        prompts.append(VOCAB.encode(",".join(map(str, nums)) + f"={target}", prompt_len, PAD))
        completions.append(VOCAB.encode(solutions[int(rng.integers(len(solutions)))], completion_len, EOS))
        numbers.append(list(nums) + [-1] * (width - len(nums)))
        targets.append(target)
        counts.append(len(solutions))
    return xr.Dataset(
        {"prompt": (("problem", "prompt_pos"), np.stack(prompts)),
         "completion": (("problem", "completion_pos"), np.stack(completions)),
         "numbers": (("problem", "number_slot"), np.array(numbers, dtype=np.int64)),
         "target": (("problem",), np.array(targets, dtype=np.int64)),
         "num_solutions": (("problem",), np.array(counts, dtype=np.int64))},
        attrs={"task": "countdown", "split": split, "vocab": list(VOCAB.tokens)},
    )


def parse_countdown_prompt(text: str) -> tuple[list[int], int]:
    """Numbers and target of a Countdown prompt 'a,b,c=t'."""
    numbers, target = text.split("=")
    return [int(x) for x in numbers.split(",")], int(target)


# -------------------------------------------------------------------------------------------- Sudoku


@lru_cache(maxsize=1)
def all_sudoku_grids() -> np.ndarray:
    """All 288 valid 4x4 Sudoku grids (digits 1..4), shape (288, 16), by backtracking."""
    grids: list[list[int]] = []

    def fill(cells: list[int]) -> None:
        if len(cells) == 16:
            grids.append(cells.copy())
            return
        for digit in range(1, 5):
            cells.append(digit)
            if _consistent(cells):
                fill(cells)
            cells.pop()

    fill([])
    return np.array(grids, dtype=np.int64)


def _units() -> list[list[int]]:
    """Cell indices of the 4 rows, 4 columns and 4 boxes."""
    rows = [[4 * r + c for c in range(4)] for r in range(4)]
    cols = [[4 * r + c for r in range(4)] for c in range(4)]
    boxes = [[4 * (br + r) + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)]
    return rows + cols + boxes


UNITS = _units()


def _consistent(cells: Sequence[int]) -> bool:
    """No digit repeats within any unit among the filled prefix of cells."""
    for unit in UNITS:
        seen = [cells[i] for i in unit if i < len(cells)]
        if len(seen) != len(set(seen)):
            return False
    return True


def sudoku_solutions(puzzle: Sequence[int]) -> np.ndarray:
    """Brute force: every valid grid that agrees with the puzzle's givens (0 = blank)."""
    grids = all_sudoku_grids()
    puzzle = np.asarray(puzzle)
    given = puzzle > 0
    return grids[(grids[:, given] == puzzle[given]).all(axis=1)]


def verify_sudoku(text: str, puzzle: Sequence[int]) -> bool:
    """True when the answer is 16 digits forming a valid grid that keeps every given."""
    if len(text) != 16 or any(ch not in "1234" for ch in text):
        return False
    cells = [int(ch) for ch in text]
    return _consistent(cells) and all(p in (0, c) for p, c in zip(puzzle, cells, strict=True))


def sudoku_reward(text: str, puzzle: Sequence[int]) -> float:
    """d1's Sudoku reward: the fraction of blank cells filled with the unique solution's digit."""
    solution = sudoku_solutions(puzzle)[0]
    blanks = [i for i, p in enumerate(puzzle) if p == 0]
    hits = sum(1 for i in blanks if i < len(text) and text[i] == str(solution[i]))
    return hits / max(len(blanks), 1)


def unique_puzzles_by_blanks(grid: Sequence[int]) -> np.ndarray:
    """How many blank patterns with b blanks (b = 0..16) leave `grid` the puzzle's only solution.

    Relabelling the digits maps one grid's puzzles one to one onto another's, so the count is computed once
    per relabelled form with first row 1 2 3 4 (12 of the 288 grids)."""
    relabel = {int(d): i + 1 for i, d in enumerate(grid[:4])}
    return _unique_patterns(tuple(relabel[int(d)] for d in grid))


@lru_cache(maxsize=16)
def _unique_patterns(grid: tuple[int, ...]) -> np.ndarray:
    """`unique_puzzles_by_blanks` of one grid: a pattern is ambiguous when it blanks every cell where some other
    grid differs from this one."""
    grids, weights = all_sudoku_grids(), 1 << np.arange(16)
    others = grids[(grids != np.array(grid)).any(1)]
    differences = np.unique(((others != np.array(grid)) * weights).sum(1))
    patterns = np.arange(1 << 16)
    ambiguous = np.zeros(len(patterns), dtype=bool)
    for d in differences:
        ambiguous |= (patterns & d) == d
    blanks = ((patterns[:, None] >> np.arange(16)) & 1).sum(1)
    return np.bincount(blanks[~ambiguous], minlength=17)


def sudoku_puzzle_counts(min_blanks: int, max_blanks: int, test_fraction: float) -> dict[str, int]:
    """Distinct puzzles of each split, exactly: the uniquely solvable patterns of min..max blanks of every grid of
    the split (the split is a hash of the grid, as `build_sudoku` assigns it)."""
    counts = {"train": 0, "test": 0}
    for grid in all_sudoku_grids():
        n = int(unique_puzzles_by_blanks(grid)[min_blanks:max_blanks + 1].sum())
        counts[_split_of("".join(map(str, grid)), test_fraction)] += n
    return counts


def _make_puzzle(grid: np.ndarray, blanks: int, rng: np.random.Generator) -> np.ndarray | None:
    """Blank cells of the grid in random order while the solution stays unique (None if stuck short)."""
    puzzle = grid.copy()
    removed = 0
    for cell in rng.permutation(16):
        trial = puzzle.copy()
        trial[cell] = 0
        if len(sudoku_solutions(trial)) == 1:
            puzzle, removed = trial, removed + 1
            if removed == blanks:
                return puzzle
    return None


def build_sudoku(num_train: int, num_test: int, *, min_blanks: int = 6, max_blanks: int = 10,
                 test_fraction: float = 0.2, seed: int = 0, bars: ProgressBars = no_progress) -> dict[str, xr.Dataset]:
    """4x4 Sudoku train/test sets with unique solutions; test puzzles come from held-out solution grids; `bars`
    shows the distinct puzzles found."""
    grids = all_sudoku_grids()
    by_split = {s: [g for g in grids if _split_of("".join(map(str, g)), test_fraction) == s]
                for s in ("train", "test")}
    wanted = {"train": num_train, "test": num_test}
    rng = np.random.default_rng(seed)
    out = {}
    with bars("puzzles", num_train + num_test) as advance:
        for split, pool in by_split.items():
            puzzles = _distinct_puzzles(pool, wanted[split], min_blanks, max_blanks, rng, advance)
            if len(puzzles) < wanted[split]:
                raise DataError(f"sudoku {split} split", "not enough distinct puzzles",
                                expected=str(wanted[split]), found=str(len(puzzles)))
            out[split] = _sudoku_dataset(list(puzzles.values()), split)
    return out


def _distinct_puzzles(pool: list[np.ndarray], wanted: int, min_blanks: int, max_blanks: int, rng: np.random.Generator,
                      advance: Callable[[int], None]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Up to `wanted` distinct (puzzle, solution) pairs from the grids of `pool`, keyed by the puzzle's digits."""
    puzzles: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(50 * wanted + 100):
        if len(puzzles) >= wanted:
            break
        grid = pool[int(rng.integers(len(pool)))]
        puzzle = _make_puzzle(grid, int(rng.integers(min_blanks, max_blanks + 1)), rng)
        if puzzle is not None and (key := "".join(map(str, puzzle))) not in puzzles:
            puzzles[key] = (puzzle, grid)
            advance(1)
    return puzzles


def _sudoku_dataset(items: list[tuple[np.ndarray, np.ndarray]], split: str) -> xr.Dataset:
    """Token arrays of Sudoku puzzles (prompt: 16 digits, 0 = blank; completion: the solved grid)."""
    puzzles = np.stack([p for p, _ in items])
    solutions = np.stack([s for _, s in items])
    return xr.Dataset(
        {"prompt": (("problem", "prompt_pos"), np.stack([VOCAB.encode("".join(map(str, p)), 16, PAD)
                                                        for p in puzzles])),
         "completion": (("problem", "completion_pos"), np.stack([VOCAB.encode("".join(map(str, s)), 16, EOS)
                                                                for s in solutions])),
         "puzzle": (("problem", "cell"), puzzles),
         "solution": (("problem", "cell"), solutions)},
        attrs={"task": "sudoku", "split": split, "vocab": list(VOCAB.tokens)},
    )


# ------------------------------------------------------------------------------------------- scoring


def score_completions(task: str, prompts: np.ndarray,
                      completions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewards (the d1 schemes) and exact correctness of completions given token arrays of prompts."""
    rewards, correct = [], []
    for prompt_ids, completion_ids in zip(np.asarray(prompts), np.asarray(completions), strict=True):
        prompt, answer = VOCAB.decode(prompt_ids), VOCAB.decode(completion_ids)
        if task == "countdown":
            numbers, target = parse_countdown_prompt(prompt)
            rewards.append(countdown_reward(answer, numbers, target))
            correct.append(verify_countdown(answer, numbers, target))
        elif task == "sudoku":
            puzzle = [int(ch) for ch in prompt]
            rewards.append(sudoku_reward(answer, puzzle))
            correct.append(verify_sudoku(answer, puzzle))
        else:
            raise DataError("task", "unknown reasoning task", expected="countdown or sudoku", found=task)
    return np.array(rewards, dtype=np.float64), np.array(correct, dtype=bool)


def check_reasoning_dataset(ds: xr.Dataset, where: str) -> None:
    """Raise DataError unless `ds` holds in-vocabulary prompt and completion token arrays of one task."""
    for name in ("prompt", "completion"):
        if name not in ds:
            raise DataError(where, f"variable '{name}' is missing",
                            expected="prompt and completion token arrays", found=str(sorted(ds.data_vars)))
        values = np.asarray(ds[name])
        if values.ndim != 2 or values.min() < 0 or values.max() >= VOCAB.size:
            raise DataError(f"{where}:{name}", "token ids out of range",
                            expected=f"2-D ids in [0, {VOCAB.size})", found=f"shape {values.shape}")
    if ds.attrs.get("task") not in ("countdown", "sudoku"):
        raise DataError(where, "attribute 'task' is not a reasoning task", expected="countdown or sudoku",
                        found=repr(ds.attrs.get("task")))


def reward_fn_for(task: str) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A torch reward function (prompts, completions) -> (rewards, correct) for the RL loop."""

    def reward_fn(prompts: torch.Tensor, completions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rewards, correct = score_completions(task, prompts.cpu().numpy(), completions.cpu().numpy())
        return torch.from_numpy(rewards).float(), torch.from_numpy(correct)

    return reward_fn

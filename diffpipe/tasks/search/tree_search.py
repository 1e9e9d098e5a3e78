"""Diffusion Tree Sampling (DTS) and its greedy search variant DTS*, over the reverse SDE.

One tree per condition. A node is a state at grid level l (0: noise at t = 1, T: a sample at t = 0)
with a visit count and a soft value; a virtual root at level -1 holds the noise draws as children.
Every iteration of every tree: *selection* descends from the root while the node already has
`max_children` children (DTS: a child with probability proportional to exp(lambda v); DTS*: the UCT
maximiser v + c sqrt(log N_parent / N_child)); *expansion* adds a child (a new noise draw, or one SDE
step from the node); *rollout* integrates that child to t = 0, every state becoming a node; *backup*
sets the leaf's value to its reward and each ancestor's to (1/lambda) log of the visit-weighted mean
of exp(lambda v_child). The trees of a batch advance together, so each SDE step is one batched call.
DTS returns a sample drawn down the tree with the same exp(lambda v) rule; DTS* the best leaf found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from diffpipe.schemas.search import TreeSearch

from ..registry import search
from .particles import ContinuousProblem, SearchResult

ROOT = 0


@dataclass
class Tree:
    """Nodes of one condition's tree as parallel lists (node 0 is the virtual root)."""

    states: list[torch.Tensor | None] = field(default_factory=lambda: [None])
    level: list[int] = field(default_factory=lambda: [-1])
    parent: list[int] = field(default_factory=lambda: [-1])
    children: list[list[int]] = field(default_factory=lambda: [[]])
    visits: list[int] = field(default_factory=lambda: [0])
    value: list[float] = field(default_factory=lambda: [-math.inf])

    def add(self, parent: int, state: torch.Tensor) -> int:
        """A new child of `parent` holding `state`; returns its index."""
        self.states.append(state)
        self.level.append(self.level[parent] + 1)
        self.parent.append(parent)
        self.children.append([])
        self.visits.append(0)
        self.value.append(-math.inf)
        self.children[parent].append(len(self.states) - 1)
        return len(self.states) - 1

    def backup(self, leaf: int, reward: float, lam: float) -> None:
        """Leaf value = reward; visits +1 and soft Bellman values on the path up to the root."""
        self.value[leaf] = reward
        node = leaf
        while node != -1:
            self.visits[node] += 1
            kids = self.children[node]
            if kids:
                weights = torch.tensor([float(self.visits[c]) for c in kids])
                values = torch.tensor([self.value[c] for c in kids], dtype=torch.float64)
                self.value[node] = float((torch.logsumexp(lam * values + weights.log(), 0) - weights.sum().log())
                                         / lam)
            node = self.parent[node]


def soft_choice(tree: Tree, node: int, lam: float, gen: torch.Generator) -> int:
    """A child of `node` with probability proportional to exp(lambda v)."""
    kids = tree.children[node]
    values = torch.tensor([tree.value[c] for c in kids], dtype=torch.float64)
    return kids[int(torch.multinomial(torch.softmax(lam * values, 0), 1, generator=gen))]


def uct_choice(tree: Tree, node: int, c: float) -> int:
    """The child of `node` maximising v + c sqrt(log N_parent / N_child)."""
    log_n = math.log(max(1, tree.visits[node]))
    return max(tree.children[node], key=lambda k: tree.value[k] + c * math.sqrt(log_n / max(1, tree.visits[k])))


def select(tree: Tree, spec: TreeSearch, steps: int, gen: torch.Generator) -> int:
    """The node to expand (or a leaf reached by selection), descending from the root."""
    node = ROOT
    while tree.level[node] < steps and len(tree.children[node]) >= spec.max_children:
        node = soft_choice(tree, node, spec.strength, gen) if spec.variant == "dts" else \
            uct_choice(tree, node, spec.exploration)
    return node


def expand_and_roll_out(trees: list[Tree], chosen: list[int], spec: TreeSearch,
                        problem: ContinuousProblem) -> list[int]:
    """From each tree's chosen node, a new child and its rollout to t = 0, all stored; returns the new leaves."""
    rows = [b for b, node in enumerate(chosen) if trees[b].level[chosen[b]] < problem.steps]
    leaves = list(chosen)
    if not rows:
        return leaves
    tips = list(chosen)
    for b in rows:
        if chosen[b] == ROOT:
            tips[b] = trees[b].add(ROOT, problem.noise(1)[0])
    level = torch.tensor([trees[b].level[tips[b]] for b in rows])
    x = torch.stack([trees[b].states[tips[b]] for b in rows])
    index = torch.tensor(rows)
    for i in range(int(level.min()), problem.steps):
        active = (level <= i).nonzero().flatten()
        x_next, _ = problem.step(x[active], torch.full((len(active),), i), problem.conditions(index[active]),
                                 spec.noise_level)
        x[active] = x_next
        for j, row in zip(active.tolist(), x_next, strict=True):
            b = rows[j]
            tips[b] = trees[b].add(tips[b], row)
    for b in rows:
        leaves[b] = tips[b]
    return leaves


def tree_sample(tree: Tree, spec: TreeSearch, gen: torch.Generator) -> int:
    """DTS: a leaf drawn down the tree with probability proportional to exp(lambda v); DTS*: the best leaf."""
    if spec.variant == "dts_star":
        leaves = [i for i, kids in enumerate(tree.children) if not kids and i != ROOT]
        return max(leaves, key=lambda i: tree.value[i])
    node = ROOT
    while tree.children[node]:
        node = soft_choice(tree, node, spec.strength, gen)
    return node


@search("tree_search")
def tree_search(spec: TreeSearch, problem: ContinuousProblem) -> SearchResult:
    """Grow one tree per condition for `rollouts` iterations and return one sample per condition."""
    trees = [Tree() for _ in range(problem.n)]
    all_index = torch.arange(problem.n)
    for _ in range(spec.rollouts):
        chosen = [select(tree, spec, problem.steps, problem.gen) for tree in trees]
        leaves = expand_and_roll_out(trees, chosen, spec, problem)
        x = torch.stack([trees[b].states[leaf] for b, leaf in enumerate(leaves)])
        rewards = problem.reward(x, problem.conditions(all_index)).tolist()
        for tree, leaf, r in zip(trees, leaves, rewards, strict=True):
            tree.backup(leaf, r, spec.strength)
    picks = [tree_sample(tree, spec, problem.gen) for tree in trees]
    x = torch.stack([tree.states[p] for tree, p in zip(trees, picks, strict=True)])
    rewards = torch.tensor([tree.value[p] for tree, p in zip(trees, picks, strict=True)], device=problem.device)
    stats = {"nodes_per_tree": sum(len(t.states) for t in trees) / len(trees)}
    return SearchResult(x, rewards, problem.evaluations, stats)

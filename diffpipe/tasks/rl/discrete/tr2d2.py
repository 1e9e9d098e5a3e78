"""`algorithm: tr2d2`: TR2-D2, a replay buffer filled by tree search over denoising steps, fit by WDCE.

Search (per drawn prompt, every `num_iterations` optimizer steps). The tree's root is the fully masked
completion; an edge is one random-order denoising step: within the current semi-autoregressive block,
the step's share of the block's masked positions is chosen uniformly at random and each is filled
with a token drawn from the policy at `temperature` (the reference's MDLM reverse step, in which the
positions to unmask do not depend on the model). Each of `mcts_iterations` iterations selects a leaf
from the root by the score

    normalised Q(child) + exploration * log p_policy(step) * sqrt(N(parent)) / N(child),

expands it into `num_children` children (one sampled step each), completes every child with the same
random-order steps and scores the completions with the reward; each reward is backed up the path. So
a search spends mcts_iterations x num_children reward evaluations per prompt, which the stage's
`group_size` bounds (the rollout budget every algorithm gets).

Weights. Along every trajectory the search sums, step by step, log p_pre(step) - log p_v(step): the
log-probability of the tokens the step committed under the frozen pretrained model minus under the
sampler that drew them (the policy at `temperature`), given the same partially masked state. The
position choice has the same probability under both and cancels, so with the clipped reward

    log RND = sum_steps [log p_pre(step) - log p_v(step)] + min(r, reward_clip) / alpha

is exactly log dP*/dP^v of the trajectory for the target P* proportional to P_pre exp(r / alpha), up to
the constant log Z that the softmax removes (the reference computes the same sum in its MCTS).

Buffer and loss. Every completion found is offered to its prompt's replay buffer (diffpipe/tasks/rl/
discrete/replay.py): the top `buffer_size` distinct completions by (reward, log RND), each with the log
RND of the search that found it. With `keep_buffer` the buffers persist across searches (and are saved
with every checkpoint, so a resumed run continues with them); without it a prompt's buffer is emptied
before each of its searches, as the reference's code does. Over a prompt's buffer of B entries,
w = softmax(log RND), minus its mean when `centering`. The loss is the weighted denoising cross-entropy:
`num_replicates` masks per entry, each token masked with probability lambda ~ U(0, 1) and weighted
1 / lambda (at most 1e5), -(1 / B) sum_i w_i mean_r (1 / lambda) sum_masked log p (the reference's mean
over buffer rows), averaged over the drawn prompts. Our network has no time input, so lambda only masks
and weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from diffpipe.schemas.rl_discrete import TR2D2
from diffpipe.tasks.mdlm.plans import MaskPlan, plan_estimate
from diffpipe.tasks.mdlm.sampler import block_schedule
from diffpipe.tasks.registry import implements

from .base import DiscreteAlgorithm, Prepared
from .core import RewardFn, Rollouts, weighted_cross_entropy
from .replay import ReplayBuffer

MAX_INVERSE_RATIO = 1e5
"""Cap of the 1 / lambda weight (reference)."""


@dataclass
class Node:
    """A partially denoised completion: `depth` sampler steps taken from the fully masked root."""

    completion: torch.Tensor
    depth: int
    log_p: float = 0.0
    """Sampler log-probability of the tokens committed by the step into this node."""
    log_rnd: float = 0.0
    """Sum of log p_pre(step) - log p_v(step) over the steps from the root to this node."""
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    """Sum of the rewards backed up through this node."""


@dataclass(frozen=True)
class StepSchedule:
    """The search's denoising steps, flattened over blocks: (block start, block end, tokens committed)."""

    steps: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(cls, length: int, total_steps: int, block_length: int | None) -> StepSchedule:
        """Steps of completions of `length`: the block sampler's blocks, each split evenly over its steps."""
        return cls(tuple((start, end, (end - start) // n + (k < (end - start) % n))
                         for start, end, n in block_schedule(length, total_steps, block_length) for k in range(n)))

    @property
    def length(self) -> int:
        """Completion length covered by the schedule."""
        return max(end for _, end, _ in self.steps)


@dataclass(frozen=True)
class Step:
    """One denoising step of a batch: the next completions and the step's log-probabilities per row."""

    completion: torch.Tensor
    log_sampler: torch.Tensor
    """log p_v of the committed tokens under the policy at the sampling temperature (float64)."""
    log_pretrained: torch.Tensor
    """log p_pre of the same tokens under the frozen pretrained model (float64)."""


def unmask_step(policy: torch.nn.Module, pretrained: torch.nn.Module, prompt: torch.Tensor,
                completion: torch.Tensor, schedule: StepSchedule, depth: int, mask_token_id: int,
                temperature: float, generator: torch.Generator | None, copies: int = 1) -> Step:
    """Step `depth` in random order, `copies` draws per row (copy-major within a row) from one forward each."""
    start, end, count = schedule.steps[depth]
    inputs = torch.cat([prompt, completion], dim=1)
    span = slice(prompt.shape[1] + start, prompt.shape[1] + end)
    sampler = F.log_softmax(policy(inputs)[:, span].double() / temperature, dim=-1).cpu()
    reference = F.log_softmax(pretrained(inputs)[:, span].double(), dim=-1).cpu()
    sampler, reference = sampler.repeat_interleave(copies, 0), reference.repeat_interleave(copies, 0)
    following = completion.repeat_interleave(copies, dim=0)
    masked = (following[:, start:end] == mask_token_id).cpu()
    noise = torch.rand(masked.shape, generator=generator).masked_fill(~masked, -1.0)
    chosen = noise.topk(count, dim=1).indices
    vocab = sampler.shape[-1]
    picked = sampler.gather(1, chosen.unsqueeze(-1).expand(-1, -1, vocab))
    tokens = torch.multinomial(picked.exp().reshape(-1, vocab), 1, generator=generator).view(len(chosen), count)
    log_sampler = picked.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(dim=1)
    log_pretrained = (reference.gather(1, chosen.unsqueeze(-1).expand(-1, -1, vocab))
                      .gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(dim=1))
    block = following[:, start:end].cpu().scatter(1, chosen, tokens.to(following.dtype))
    following[:, start:end] = block.to(following.device)
    return Step(following, log_sampler, log_pretrained)


def score(child: Node, parent: Node, low: float, high: float, exploration: float) -> float:
    """Selection score: min-max normalised mean reward plus the reference's log-probability exploration term."""
    q = (child.value / child.visits - low) / (high - low) if high > low else 0.0
    return q + exploration * child.log_p * math.sqrt(parent.visits) / child.visits


def select(root: Node, terminal: int, low: float, high: float, exploration: float) -> Node:
    """Walk down by the best score among non-terminal children; stop at a node without any."""
    node = root
    while True:
        open_children = [c for c in node.children if c.depth < terminal]
        if not open_children:
            return node
        node = max(open_children, key=lambda c: score(c, node, low, high, exploration))


@dataclass
class Search:
    """One prompt's search: the tree and every rollout (completion, reward, correctness, log RND) found."""

    root: Node
    completions: torch.Tensor
    rewards: torch.Tensor
    correct: torch.Tensor
    log_rnd: torch.Tensor


@dataclass(frozen=True)
class SearchRollouts(Rollouts):
    """The rollouts of the searches, with each trajectory's log RND."""

    log_rnd: torch.Tensor


@torch.no_grad()
def tree_search(policy: torch.nn.Module, pretrained: torch.nn.Module, prompt: torch.Tensor, reward_fn: RewardFn,
                spec: TR2D2, schedule: StepSchedule, mask_token_id: int, generator: torch.Generator | None) -> Search:
    """mcts_iterations rounds of select, expand into num_children, complete each child, score, back up."""
    terminal, children = len(schedule.steps), spec.num_children
    root = Node(torch.full((1, schedule.length), mask_token_id, dtype=prompt.dtype, device=prompt.device), 0)
    found: list[tuple[torch.Tensor, ...]] = []
    low, high = math.inf, -math.inf
    prompts = prompt.expand(children, -1)
    for _ in range(spec.mcts_iterations):
        leaf = select(root, terminal, low, high, spec.exploration)
        first = unmask_step(policy, pretrained, prompt, leaf.completion, schedule, leaf.depth, mask_token_id,
                            spec.temperature, generator, copies=children)
        path = leaf.log_rnd + first.log_pretrained - first.log_sampler
        completions, log_rnd = first.completion, path
        for depth in range(leaf.depth + 1, terminal):
            step = unmask_step(policy, pretrained, prompts, completions, schedule, depth, mask_token_id,
                               spec.temperature, generator)
            completions, log_rnd = step.completion, log_rnd + step.log_pretrained - step.log_sampler
        rewards, correct = reward_fn(prompts, completions)
        rewards = rewards.float().cpu()
        log_rnd = log_rnd + rewards.double().clamp(max=spec.reward_clip) / spec.alpha
        for i in range(children):
            child = Node(first.completion[i:i + 1], leaf.depth + 1, float(first.log_sampler[i]), float(path[i]),
                         leaf)
            leaf.children.append(child)
            backup(child, float(rewards[i]))
        low, high = min(low, float(rewards.min())), max(high, float(rewards.max()))
        found.append((completions, rewards, correct.cpu(), log_rnd))
    completions, rewards, correct, log_rnd = (torch.cat(parts) for parts in zip(*found, strict=True))
    return Search(root, completions, rewards.to(prompt.device), correct, log_rnd)


def backup(node: Node | None, reward: float) -> None:
    """Add one visit and the reward to the node and every ancestor."""
    while node is not None:
        node.visits += 1
        node.value += reward
        node = node.parent


def buffer_weights(log_rnd: torch.Tensor, filled: torch.Tensor, centering: bool) -> torch.Tensor:
    """softmax of log RND over each prompt's buffer entries (rows of (prompts, capacity)); optionally minus
    its mean there; zero on padding rows."""
    weights = torch.softmax(log_rnd.masked_fill(~filled, -math.inf), dim=1)
    if centering:
        mean = weights.sum(dim=1, keepdim=True) / filled.sum(dim=1, keepdim=True)
        weights = torch.where(filled, weights - mean, torch.zeros_like(weights))
    return weights


def wdce_plan(batch_size: int, length: int, num_replicates: int, generator: torch.Generator | None) -> MaskPlan:
    """R masks per row, each token masked with probability lambda ~ U(0, 1), weight min(1 / lambda, 1e5) / R."""
    ratios = torch.rand(num_replicates, batch_size, 1, generator=generator)
    masks = torch.rand(num_replicates, batch_size, length, generator=generator) < ratios
    weights = (1.0 / ratios.squeeze(-1)).clamp(max=MAX_INVERSE_RATIO) / num_replicates
    return MaskPlan(masks, weights)


@dataclass
class BufferPrepared(Prepared):
    """What a search round prepared: the drawn prompts' buffer rows train every inner iteration."""

    rows: Rollouts | None = None
    filled: torch.Tensor | None = None
    """True on the rows that are buffer entries (the others pad each prompt's buffer to its capacity)."""


@implements("algorithm", "tr2d2")
class TR2D2Algorithm(DiscreteAlgorithm):
    """TR2-D2: tree-search replay buffer, softmax(log RND) weights, weighted denoising cross-entropy."""

    spec: TR2D2

    def __init__(self, spec: TR2D2, mask_token_id: int, eos_token_id: int):
        super().__init__(spec, mask_token_id, eos_token_id)
        self.buffer = ReplayBuffer(spec.buffer_size or spec.mcts_iterations * spec.num_children)

    @property
    def state(self) -> ReplayBuffer:
        """The replay buffer: checkpointed with the run, so a resumed run continues with it."""
        return self.buffer

    @property
    def uses_old(self) -> bool:
        """No ratio."""
        return False

    def collect(self, policy: torch.nn.Module, reference: torch.nn.Module, prompts: torch.Tensor,
                reward_fn: RewardFn, group_size: int, completion_length: int,
                generator: torch.Generator | None) -> SearchRollouts:
        """Every rollout of a tree search per prompt (mcts_iterations x num_children rows each)."""
        spec = self.spec
        schedule = StepSchedule.of(completion_length, spec.rollout_steps or completion_length, spec.block_length)
        searches = [tree_search(policy, reference, prompt.unsqueeze(0), reward_fn, spec, schedule,
                                self.mask_token_id, generator) for prompt in prompts]
        completions, rewards, correct, log_rnd = (torch.cat([getattr(s, name) for s in searches])
                                                  for name in ("completions", "rewards", "correct", "log_rnd"))
        budget = spec.mcts_iterations * spec.num_children
        return SearchRollouts(prompts.repeat_interleave(budget, dim=0), completions, rewards, correct, budget,
                              log_rnd)

    @torch.no_grad()
    def prepare(self, model: torch.nn.Module, ref_model: torch.nn.Module, rollouts: SearchRollouts,
                generator: torch.Generator | None) -> BufferPrepared:
        """Offer the searches' rollouts to the buffers; the drawn prompts' buffers, their weights and plans."""
        drawn = rollouts.prompt[::rollouts.group_size]
        if not self.spec.keep_buffer:
            self.buffer.forget(drawn)
        self.buffer.add(rollouts.prompt, rollouts.completion, rollouts.rewards, rollouts.log_rnd, rollouts.correct)
        batch = self.buffer.batch(drawn)
        rows = Rollouts(batch.prompt, batch.completion, batch.rewards, batch.correct, self.buffer.capacity)
        filled = rows.grouped(batch.filled)
        weights = buffer_weights(rows.grouped(batch.log_rnd), filled, self.spec.centering)
        signal = (weights / filled.sum(dim=1, keepdim=True)).reshape(-1).float()
        plans = [self.draw_plan(rows, generator).to(rows.prompt.device) for _ in range(self.spec.num_iterations)]
        return BufferPrepared(plans, signal, rows=rows, filled=batch.filled)

    def loss(self, model: torch.nn.Module, rollouts: Rollouts, prepared: BufferPrepared,
             iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The WDCE loss of one inner iteration on the buffer rows (not on the fresh rollouts)."""
        rows = prepared.rows
        current = self.surrogate(model, rows, prepared.plans[iteration])
        loss, stats = self.objective(current, current.detach(), None, prepared.signal, rows)
        stats["buffer_reward"] = float(rows.rewards[prepared.filled].mean())
        return loss, stats

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """The WDCE plan."""
        rows, length = rollouts.completion.shape
        return wdce_plan(rows, length, self.spec.num_replicates, generator)

    def surrogate(self, model: torch.nn.Module, rollouts: Rollouts, plan: MaskPlan) -> torch.Tensor:
        """mean over replicates of (1 / lambda) sum of the masked tokens' log-probabilities (N,)."""
        return plan_estimate(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """-sum_i (w_i / B) WDCE_i per prompt, averaged over prompts."""
        return weighted_cross_entropy(signal, current, rollouts)

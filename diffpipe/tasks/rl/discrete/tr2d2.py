"""`algorithm: tr2d2`: TR2-D2, a replay buffer filled by tree search over denoising steps, fit by WDCE.

Search (per prompt, every `num_iterations` optimizer steps). The tree's root is the fully masked
completion; an edge is one step of the rollout sampler (low-confidence remasking in blocks). Each of
`mcts_iterations` iterations selects a leaf from the root by the score

    normalised Q(child) + exploration * log p_policy(step) * sqrt(N(parent)) / N(child),

expands it into `num_children` children (one sampled step each), completes every child with the
policy's sampler and scores the completions with the reward; each reward is backed up the path. So a
search spends mcts_iterations x num_children reward evaluations per prompt, which the stage's
`group_size` bounds (the rollout budget every algorithm gets).

Buffer and loss. Every completion found is a row of the batch; the buffer is the top `buffer_size`
distinct completions by reward, the rest get weight 0. Over the buffer, w = softmax(log RND), with
log RND = (ELBO_pre - ELBO_theta) + min(r, reward_clip) / alpha, centred to w - mean(w) when
`centering`. The loss is the weighted denoising cross-entropy: `num_replicates` masks per row, each
token masked with probability lambda ~ U(0, 1) and weighted 1 / lambda (at most 1e5),
-sum_i w_i mean_r (1 / lambda) sum_masked log p, averaged over prompts.

Where this differs from the reference code: its trajectory log-ratio sums per-step log-probabilities
of the reverse process; our rollout sampler commits the most confident tokens, whose step
probabilities are not the model's path measure, so the log-ratio is the ELBO difference (the estimate
DMPO uses). Our network has no time input, so lambda only masks and weights. The buffer is rebuilt by
each search rather than merged across searches (a drawn prompt is rarely drawn again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from diffusers import BlockRefinementScheduler

from diffpipe.schemas.rl_discrete import TR2D2
from diffpipe.tasks.mdlm.elbo import draw_elbo_plan
from diffpipe.tasks.mdlm.plans import MaskPlan, plan_estimate
from diffpipe.tasks.mdlm.sampler import NO_THRESHOLD, block_schedule
from diffpipe.tasks.registry import implements

from .base import DiscreteAlgorithm
from .core import RewardFn, Rollouts

MAX_INVERSE_RATIO = 1e5
"""Cap of the 1 / lambda weight (reference)."""


@dataclass
class Node:
    """A partially denoised completion: `depth` sampler steps taken from the fully masked root."""

    completion: torch.Tensor
    depth: int
    log_p: float = 0.0
    """Policy log-probability of the tokens committed by the step into this node."""
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    """Sum of the rewards backed up through this node."""


@dataclass(frozen=True)
class StepSchedule:
    """The rollout sampler's steps, flattened over blocks: (block start, end, steps, step in block)."""

    steps: tuple[tuple[int, int, int, int], ...]

    @classmethod
    def of(cls, length: int, total_steps: int, block_length: int | None) -> StepSchedule:
        """The schedule of the block sampler for completions of `length`."""
        return cls(tuple((start, end, n, k) for start, end, n in block_schedule(length, total_steps, block_length)
                         for k in range(n)))


def denoise_step(model: torch.nn.Module, prompt: torch.Tensor, completion: torch.Tensor, schedule: StepSchedule,
                 depth: int, mask_token_id: int, temperature: float, generator: torch.Generator | None,
                 copies: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `depth` of the block sampler, `copies` samples per row from one forward: next completions and the
    log-probabilities of the tokens each committed (rows copy-major within a row)."""
    start, end, block_steps, k = schedule.steps[depth]
    scheduler = BlockRefinementScheduler(threshold=NO_THRESHOLD)
    scheduler.set_timesteps(block_steps, device=completion.device, block_length=end - start)
    logits = model(torch.cat([prompt, completion], dim=1))[:, prompt.shape[1] + start:prompt.shape[1] + end]
    following = completion.repeat_interleave(copies, dim=0)
    out = scheduler.step(logits.float().repeat_interleave(copies, dim=0), k, following[:, start:end],
                         mask_token_id=mask_token_id, temperature=temperature, generator=generator)
    following[:, start:end] = out.prev_sample
    log_p = (out.sampled_probs.clamp(min=1e-30).log() * out.transfer_index).sum(dim=1)
    return following, log_p


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
    """One prompt's search: the tree and every rollout (completion, reward, correctness) in the order found."""

    root: Node
    completions: torch.Tensor
    rewards: torch.Tensor
    correct: torch.Tensor


@torch.no_grad()
def tree_search(model: torch.nn.Module, prompt: torch.Tensor, reward_fn: RewardFn, spec: TR2D2,
                schedule: StepSchedule, mask_token_id: int, generator: torch.Generator | None) -> Search:
    """mcts_iterations rounds of select, expand into num_children, complete each child, score, back up."""
    terminal, children = len(schedule.steps), spec.num_children
    root = Node(torch.full((1, completion_length(schedule)), mask_token_id, dtype=prompt.dtype,
                           device=prompt.device), 0)
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    low, high = math.inf, -math.inf
    for _ in range(spec.mcts_iterations):
        leaf = select(root, terminal, low, high, spec.exploration)
        states, log_p = denoise_step(model, prompt, leaf.completion, schedule, leaf.depth, mask_token_id,
                                     spec.temperature, generator, copies=children)
        prompts, completions = prompt.expand(children, -1), states
        for depth in range(leaf.depth + 1, terminal):
            completions, _ = denoise_step(model, prompts, completions, schedule, depth, mask_token_id,
                                          spec.temperature, generator)
        rewards, correct = reward_fn(prompts, completions)
        rewards = rewards.float()
        for i in range(children):
            child = Node(states[i:i + 1], leaf.depth + 1, float(log_p[i]), leaf)
            leaf.children.append(child)
            backup(child, float(rewards[i]))
        low, high = min(low, float(rewards.min())), max(high, float(rewards.max()))
        found.append((completions, rewards, correct))
    completions, rewards, correct = (torch.cat(parts) for parts in zip(*found, strict=True))
    return Search(root, completions, rewards.to(prompt.device), correct)


def completion_length(schedule: StepSchedule) -> int:
    """Completion length covered by the schedule."""
    return max(end for _, end, _, _ in schedule.steps)


def backup(node: Node | None, reward: float) -> None:
    """Add one visit and the reward to the node and every ancestor."""
    while node is not None:
        node.visits += 1
        node.value += reward
        node = node.parent


def buffer_mask(rollouts: Rollouts, size: int) -> torch.Tensor:
    """Rows in each prompt's buffer: its top `size` distinct completions by reward (first found on ties)."""
    keep = torch.zeros(rollouts.completion.shape[0], dtype=torch.bool)
    g = rollouts.group_size
    for group in range(rollouts.completion.shape[0] // g):
        rows = range(group * g, (group + 1) * g)
        order = sorted(rows, key=lambda i: (-float(rollouts.rewards[i]), i))
        seen: set[tuple[int, ...]] = set()
        for i in order:
            key = tuple(rollouts.completion[i].tolist())
            if key not in seen and len(seen) < size:
                seen.add(key)
                keep[i] = True
    return keep.to(rollouts.completion.device)


def buffer_weights(log_rnd: torch.Tensor, in_buffer: torch.Tensor, centering: bool) -> torch.Tensor:
    """softmax of log RND over each group's buffer rows (rows of (groups, N)); optionally minus its mean there."""
    weights = torch.softmax(log_rnd.masked_fill(~in_buffer, -math.inf), dim=1)
    if centering:
        mean = weights.sum(dim=1, keepdim=True) / in_buffer.sum(dim=1, keepdim=True)
        weights = torch.where(in_buffer, weights - mean, torch.zeros_like(weights))
    return weights


def wdce_plan(batch_size: int, length: int, num_replicates: int, generator: torch.Generator | None) -> MaskPlan:
    """R masks per row, each token masked with probability lambda ~ U(0, 1), weight min(1 / lambda, 1e5) / R."""
    ratios = torch.rand(num_replicates, batch_size, 1, generator=generator)
    masks = torch.rand(num_replicates, batch_size, length, generator=generator) < ratios
    weights = (1.0 / ratios.squeeze(-1)).clamp(max=MAX_INVERSE_RATIO) / num_replicates
    return MaskPlan(masks, weights)


@implements("algorithm", "tr2d2")
class TR2D2Algorithm(DiscreteAlgorithm):
    """TR2-D2: tree-search replay buffer, softmax(log RND) weights, weighted denoising cross-entropy."""

    spec: TR2D2

    @property
    def uses_old(self) -> bool:
        """No ratio."""
        return False

    def collect(self, policy: torch.nn.Module, reference: torch.nn.Module, prompts: torch.Tensor,
                reward_fn: RewardFn, group_size: int, completion_length: int,
                generator: torch.Generator | None) -> Rollouts:
        """Every rollout of a tree search per prompt (mcts_iterations x num_children rows each)."""
        spec = self.spec
        schedule = StepSchedule.of(completion_length, spec.rollout_steps or completion_length, spec.block_length)
        searches = [tree_search(policy, prompt.unsqueeze(0), reward_fn, spec, schedule, self.mask_token_id,
                                generator) for prompt in prompts]
        completions, rewards, correct = (torch.cat([getattr(s, name) for s in searches])
                                         for name in ("completions", "rewards", "correct"))
        budget = spec.mcts_iterations * spec.num_children
        return Rollouts(prompts.repeat_interleave(budget, dim=0), completions, rewards, correct, budget)

    def draw_plan(self, rollouts: Rollouts, generator: torch.Generator | None) -> MaskPlan:
        """The WDCE plan."""
        rows, length = rollouts.completion.shape
        return wdce_plan(rows, length, self.spec.num_replicates, generator)

    def surrogate(self, model: torch.nn.Module, rollouts: Rollouts, plan: MaskPlan) -> torch.Tensor:
        """mean over replicates of (1 / lambda) sum of the masked tokens' log-probabilities (N,)."""
        return plan_estimate(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)

    def signal(self, model: torch.nn.Module, ref_model: torch.nn.Module, rollouts: Rollouts,
               generator: torch.Generator | None) -> torch.Tensor:
        """Buffer weights from log RND = ELBO_pre - ELBO_theta + min(r, clip) / alpha (zero outside the buffer)."""
        spec = self.spec
        rows, length = rollouts.completion.shape
        plan = draw_elbo_plan("antithetic", rows, length, spec.elbo_forwards, generator).to(rollouts.prompt.device)
        log_rnd = (plan_estimate(ref_model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id)
                   - plan_estimate(model, rollouts.prompt, rollouts.completion, plan, self.mask_token_id))
        log_rnd = log_rnd + rollouts.rewards.to(log_rnd).clamp(max=spec.reward_clip) / spec.alpha
        in_buffer = rollouts.grouped(buffer_mask(rollouts, spec.buffer_size or rollouts.group_size))
        return buffer_weights(rollouts.grouped(log_rnd), in_buffer, spec.centering).reshape(-1)

    def objective(self, current: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                  signal: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """-sum_i w_i WDCE_i per prompt, averaged over prompts."""
        loss = -rollouts.grouped(signal * current).sum(dim=1).mean()
        positive = rollouts.grouped(signal.clamp(min=0))
        ess = positive.sum(dim=1) ** 2 / (positive ** 2).sum(dim=1).clamp(min=1e-12)
        return loss, {"positive_weight_ess": float(ess.mean())}

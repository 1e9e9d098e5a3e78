"""What every sampler method shares: energy-evaluation counting and the state saved with checkpoints."""

from __future__ import annotations

from typing import Any

import torch

from ..distributed import on_own_rows, sharded_rows


class CountingTarget:
    """Wraps a target and counts the rows passed through its log density (a gradient or a Hessian-vector
    product of it counts as one evaluation per row).

    Across processes every rank calls it with the same global batch: each rank evaluates its own rows
    and the results are gathered (differentiably for the log density, which PIS differentiates through
    the rollout), so every rank gets the whole batch's values having computed 1 / world_size of them.
    The count is the global batch's, hence one process's at any world size.
    """

    def __init__(self, target: Any):
        self.target, self.evals = target, 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The target's log density, counted."""
        self.evals += x.shape[0]
        return on_own_rows(self.target.log_prob, x)

    def value_and_score(self, x: torch.Tensor, clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(x) and grad log pi(x), each row's gradient norm clipped to `clip` (counted once per row)."""
        self.evals += x.shape[0]

        def rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                value = self.target.log_prob(x)
                (grad,) = torch.autograd.grad(value.sum(), x)
            return value.detach(), clip_norm(grad, clip)

        return sharded_rows(rows)(x)

    def score(self, x: torch.Tensor, clip: float | None = None) -> torch.Tensor:
        """grad log pi(x), each row's norm clipped to `clip` (counted once per row)."""
        return self.value_and_score(x, clip)[1]

    def hvp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Hessian of log pi at x times v, per row (double backward; counted once per row)."""
        self.evals += x.shape[0]

        def rows(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor]:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.target.log_prob(x).sum(), x, create_graph=True)
                (hv,) = torch.autograd.grad((grad * v).sum(), x)
            return (hv,)

        return sharded_rows(rows)(x, v)[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


def clip_norm(v: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Rows of v rescaled to norm at most `clip` (None: unchanged)."""
    if clip is None:
        return v
    norm = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v * (clip / norm).clamp(max=1.0)


class SamplerState:
    """Named tensors a method carries between steps (buffer, step counter, energy count), saved with
    every checkpoint of the shared loop so that a resumed run continues exactly."""

    def __init__(self, target: CountingTarget):
        self.target = target
        self.tensors: dict[str, torch.Tensor] = {"step": torch.zeros((), dtype=torch.long)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors, with the energy-evaluation count."""
        return {**self.tensors, "energy_evals": torch.tensor(self.target.evals, dtype=torch.long)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` saved."""
        state = dict(state)
        self.target.evals = int(state.pop("energy_evals"))
        self.tensors = state

    def tick(self, every: int) -> bool:
        """Advance the step counter; True when this step should refill the buffer (every `every` steps)."""
        step = int(self.tensors["step"])
        self.tensors["step"] = torch.tensor(step + 1)
        return step % every == 0


def tempered_gamma(log_w: torch.Tensor, budget: float, iters: int = 40) -> float:
    """Largest gamma in (0, 1] with KL-hat(gamma) = log mean w^gamma - gamma mean log w <= budget (bisection)."""
    log_w = log_w.double()

    def kl(g: float) -> float:
        return float(torch.logsumexp(g * log_w, 0) - torch.log(torch.tensor(float(len(log_w)))) - g * log_w.mean())

    if kl(1.0) <= budget:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kl(mid) <= budget else (lo, mid)
    return max(lo, 1e-6)

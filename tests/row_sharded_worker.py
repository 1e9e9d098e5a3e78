"""Run on every rank by torchrun (test_distributed.py): `RowSharded` and `sharded_rows` against one process.

Each rank writes `rank<r>.json` into the folder given as argument: the rows its model saw, and how far
the gathered outputs and the DDP-averaged gradients are from the same computation in this one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffpipe.tasks.distributed import RowSharded, sharded_rows


def group_loss(out: torch.Tensor, group_size: int) -> torch.Tensor:
    """A loss that couples the rows of each group (normalised within the group, then cubed)."""
    g = out.reshape(-1, group_size, out.shape[-1])
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).pow(3).mean()


def compare(rows: int, group_size: int) -> dict[str, float | list[int]]:
    """Rows seen and the largest output / gradient difference for a global batch of `rows` rows."""
    torch.manual_seed(0)  # the same model and batch on every rank
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    batch = torch.randn(rows, 3, dtype=torch.float64)
    expected_out = model(batch)
    expected = torch.autograd.grad(group_loss(expected_out, group_size), list(model.parameters()))
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    ddp = DistributedDataParallel(RowSharded(model))  # kept: its reducer averages the gradients in backward
    group_loss(ddp(batch), group_size).backward()
    with torch.no_grad():
        out = ddp(batch)
    scale = max(float(e.abs().max()) for e in expected)  # (the last bias has a zero gradient: the loss is
    # invariant to shifting a group)
    grad = max(float((p.grad - e).abs().max()) for p, e in zip(model.parameters(), expected, strict=True)) / scale
    return {"seen": seen, "output": float((out - expected_out).abs().max()), "grad": grad}


def main(folder: Path) -> None:
    """Compare an even batch (sharded) and an odd one (run whole on every rank); score rows with sharded_rows."""
    dist.init_process_group("gloo")
    calls: list[int] = []

    def score(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(x.shape[0])
        return x.sum(1), x.sum(1) > 0

    x = torch.arange(24.0).reshape(8, 3) - 10
    total, positive = sharded_rows(score)(x)
    result = {"even": compare(8, 4), "odd": compare(5, 5), "score_rows": calls,
              "scores_exact": bool(torch.equal(total, x.sum(1)) and torch.equal(positive, x.sum(1) > 0))}
    (folder / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

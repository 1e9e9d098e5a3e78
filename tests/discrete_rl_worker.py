"""One rollout batch of every masked-diffusion RL algorithm through the rl stage's per-step work, in one process or
on every rank of a torchrun group (test_distributed.py starts it with two gloo ranks).

`run_algorithm` is what the test also calls in its own process: the stage's `DiscreteRun.step_loss` under the
shared loop's wrapping (`distributed.Wrapped`: DDP across ranks), `num_iterations` optimizer steps. It records
the rows the policy network itself computed (a forward pre-hook on the unwrapped model, so across ranks: this
rank's rows only), the rows the verifier scored, the losses and the trained weights. Each rank writes
`rank<r>.json` (rows, losses, log) and `rank<r>-<algorithm>.safetensors` (weights) into the given folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from diffpipe.schemas.rl import RLStage
from diffpipe.schemas.rl_discrete import DISCRETE_ALGORITHMS
from diffpipe.tasks.data.reasoning import EOS, MASK, VOCAB
from diffpipe.tasks.distributed import Wrapped, frozen_copy, rank
from diffpipe.tasks.nets.mdlm import MaskedDiffusionTransformer
from diffpipe.tasks.rl.discrete import make_algorithm
from diffpipe.tasks.rl.discrete.stage import LOG_COLUMNS, DiscreteRun, DiscreteState

ALGORITHMS = sorted(cls.model_fields["algorithm"].default for cls in DISCRETE_ALGORITHMS)
OPTIONS = {"num_iterations": 2, "block_length": 3, "temperature": 1.0}
SEARCH = {"mcts_iterations": 2, "num_children": 2}
"""tr2d2: 2 x 2 = 4 reward evaluations per prompt, the others' group_size."""
GROUPS, GROUP_SIZE, COMPLETION = 2, 4, 6


def reward_fn(prompts: torch.Tensor, completions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic verifier with partial credit: the share of even tokens."""
    rewards = (completions % 2 == 0).float().mean(dim=1)
    return rewards, rewards > 0.5


def run_algorithm(algorithm: str) -> dict[str, Any]:
    """One rollout batch (mu = 2 optimizer steps) of `algorithm`: rows computed here, losses, log, weights."""
    torch.manual_seed(5)
    model = MaskedDiffusionTransformer(VOCAB.size, 10, MASK, d_model=16, num_layers=1, num_heads=2)
    with torch.no_grad():
        model.head.weight.mul_(8.0)  # predictions that depend on the context
    prompts = torch.randint(3, 21, (GROUPS, 4), generator=torch.Generator().manual_seed(1))
    options = {"algorithm": algorithm, **OPTIONS, **(SEARCH if algorithm == "tr2d2" else {})}
    spec = RLStage.model_validate({"name": "rl", "init": "pretrain", "algorithm": options,
                                   "rewards": [{"name": "verifier"}], "group_size": GROUP_SIZE,
                                   "groups_per_step": GROUPS, "steps": OPTIONS["num_iterations"], "lr": 1e-3})
    algo = make_algorithm(spec.algorithm, MASK, EOS)
    state = DiscreteState(spec.steps, algo.state)
    scored: list[int] = []

    def counted_reward(p: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scored.append(int(c.shape[0]))
        return reward_fn(p, c)

    reference = frozen_copy(model, torch.device("cpu"))
    run = DiscreteRun(spec, model, reference, algo, counted_reward, prompts, COMPLETION, state)
    rows = {"policy": 0, "reference": 0}
    model.register_forward_pre_hook(lambda _m, args: rows.__setitem__("policy", rows["policy"] + args[0].shape[0]))
    reference.register_forward_pre_hook(
        lambda _m, args: rows.__setitem__("reference", rows["reference"] + args[0].shape[0]))
    wrapped = Wrapped(model, run.step_loss, torch.device("cpu"))
    optimizer, gen, losses = torch.optim.AdamW(model.parameters(), lr=spec.lr), torch.Generator().manual_seed(0), []
    model.train()
    for _ in range(spec.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = wrapped.loss(gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    log = state.log
    return {"rows": rows, "scored": sum(scored), "losses": losses,
            "log": {c: log[:, i].tolist() for i, c in enumerate(LOG_COLUMNS) if c != "wall_s"},
            "weights": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}}


def main(folder: Path) -> None:
    """Every algorithm on this rank; its results into `folder`."""
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results = {}
    for algorithm in ALGORITHMS:
        out = run_algorithm(algorithm)
        save_file(out.pop("weights"), folder / f"rank{rank()}-{algorithm}.safetensors")
        results[algorithm] = out
    (folder / f"rank{rank()}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""SDPO and TR2-D2 against coupled-GRPO and GDPO on Countdown and Sudoku, and on RNA design (reward, diversity).

Every number comes from the real pipeline: `pipelines/countdown.yaml`, `pipelines/sudoku.yaml` or
`pipelines/rna_design.yaml` (shrunk to CPU size) runs pretrain -> evaluate the pretrained model -> rl
with one algorithm -> sample -> evaluate, so held-out accuracy is the evaluate stage's (greedy,
held-out problems). Every algorithm gets the same reward evaluations: steps / num_iterations rollout
batches of groups_per_step prompts x group_size rewards (tr2d2: mcts_iterations x num_children =
group_size per prompt). Wall time is the rl stage's training wall time. The pretrain stage is shared by
the algorithms of a seed (cached).

RNA diversity: for the first `--diversity-targets` held-out structures, `--diversity-samples`
completions each at temperature 1 with the rollout sampler the rl stage uses; reported are the share
of distinct sequences and the mean pairwise Hamming distance per target (in nucleotides), beside the
mean base-pair F1 of those samples.

Sudoku scores partial credit (the exact verifier's share of blanks filled right) besides exact solves.

Prints and writes benchmarks/results/mdlm_align.json through benchmarks/harness.py (commit, libraries,
device, threads, load, date; plus ViennaRNA's version), after every run so a stopped benchmark keeps
what it measured. One thread; a busy shared 2-core machine.

    python benchmarks/mdlm_align.py --seeds 0 1 2
    python benchmarks/mdlm_align.py --quick     # one seed at tiny sizes, to a temporary folder
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from harness import REPO, open_benchmark, parser, write_result
from prefect import flow

from diffpipe.flows.pipeline import execute
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.schemas.rl_discrete import SDPO
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.data.reasoning_domain import token_tensors
from diffpipe.tasks.data.rna import RNADesignDomain, design_scores
from diffpipe.tasks.rl.discrete import rollout
from diffpipe.tasks.sample import load_checkpoint

GROUP_SIZE = 6
ALGORITHMS = {  # num_iterations pinned so every algorithm gets the same rollout batches
    "coupled_grpo": {"algorithm": "coupled_grpo", "num_iterations": 2},
    "gdpo": {"algorithm": "gdpo", "num_iterations": 2},
    "sdpo": {"algorithm": "sdpo", "num_iterations": 2},
    "tr2d2": {"algorithm": "tr2d2", "num_iterations": 2, "mcts_iterations": 2, "num_children": 3,
              "num_replicates": 4},
}
QUICK = {"seeds": [0], "pretrain_steps": 20, "rl_steps": 2, "groups_per_step": 2, "diversity_targets": 2}
"""--quick: sizes that only check every task and algorithm runs."""
QUICK_DATA = {"num_train": 100, "num_test": 8}
TASKS = {  # sample_steps: decoding steps of the evaluation sampler (one token per step for Sudoku and RNA)
    "countdown": {"spec": "countdown.yaml", "data": {"num_train": 1500, "num_test": 200},
                  "block_length": 4, "sample_steps": 8,
                  "rewards": [{"name": "exact_verifier"}, {"name": "countdown_closeness", "weight": 0.4}]},
    "sudoku": {"spec": "sudoku.yaml", "data": {"num_train": 1500, "num_test": 200},
               "block_length": 8, "sample_steps": 16, "rewards": [{"name": "exact_verifier"}]},
    "rna_design": {"spec": "rna_design.yaml", "data": {"num_train": 1500, "num_test": 100, "length": 20},
                   "block_length": 20, "sample_steps": 20, "rewards": [{"name": "rna_fold"}]},
}


def spec(task: str, root: Path, seed: int, algorithm: dict, args: argparse.Namespace) -> dict:
    """The shipped spec of `task`, CPU-shrunk, with the given rl algorithm."""
    setting = TASKS[task]
    raw = yaml.safe_load((REPO / "pipelines" / setting["spec"]).read_text())
    raw["data"].update(setting["data"], **(QUICK_DATA if args.quick else {}))
    raw["model"] = {"arch": "mdlm", "d_model": 64, "num_layers": 2, "num_heads": 4}
    length = setting["block_length"]
    for stage in raw["stages"]:
        if stage["stage"] == "pretrain":
            stage.update(steps=args.pretrain_steps, checkpoint_every=args.pretrain_steps, log_every=100)
        elif stage["stage"] == "sample":
            stage.update(num_samples=raw["data"]["num_test"],
                         scheduler={"name": "BlockRefinementScheduler", "steps": setting["sample_steps"],
                                    "options": {"block_length": length}})
        elif stage["stage"] == "rl":
            stage.update(algorithm={**algorithm, "block_length": length}, rewards=setting["rewards"],
                         group_size=GROUP_SIZE, groups_per_step=args.groups_per_step, steps=args.rl_steps,
                         checkpoint_every=args.rl_steps, log_every=args.rl_steps, lr=args.lr)
    raw["storage"] = {"root": str(root)}
    raw["runtime"] = {"device": "cpu", "seed": seed, "num_threads": 1}
    return raw


@torch.no_grad()
def diversity(store: ArtifactStore, summary: dict, args: argparse.Namespace, seed: int) -> dict:
    """Distinct share, mean pairwise Hamming distance and mean F1 of sampled designs per held-out target."""
    refs = {name: store.lookup(entry["cache_key"]) for name, entry in summary.items()}
    test = RNADesignDomain().load_split(store.local_path(refs["data"]), "test")
    prompts = token_tensors(test)[0][: args.diversity_targets]
    out = {}
    for stage in ("pretrain", "rl"):
        model, _, _ = load_checkpoint(store.local_path(refs[stage]))
        sampler = SDPO(temperature=1.0, block_length=TASKS["rna_design"]["block_length"])  # rollout sampler options
        batch = rollout(model, prompts, unscored, sampler, args.diversity_samples, prompts.shape[1],
                        torch.Generator().manual_seed(seed))
        groups = batch.completion.view(len(prompts), args.diversity_samples, -1)
        distinct = [len({tuple(row.tolist()) for row in g}) / len(g) for g in groups]
        hamming = [float(np.mean([(a != b).sum().item() for a, b in itertools.combinations(g, 2)])) for g in groups]
        rewards, correct = design_scores(batch.prompt.numpy(), batch.completion.numpy())
        out[stage] = {"distinct_share": float(np.mean(distinct)), "mean_pairwise_hamming": float(np.mean(hamming)),
                      "sampled_f1": float(rewards.mean()), "sampled_exact": float(correct.mean())}
    return out


def unscored(prompts: torch.Tensor, completions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """No reward at sampling time (the designs are scored afterwards)."""
    return torch.zeros(len(completions)), torch.zeros(len(completions), dtype=torch.bool)


def one_run(task: str, root: Path, seed: int, name: str, args: argparse.Namespace) -> dict:
    """Run the pipeline with one algorithm; held-out scores before and after, rl metrics, wall time."""
    raw = spec(task, root, seed, ALGORITHMS[name], args)
    t0 = time.perf_counter()
    summary = {s["name"]: s for s in flow(name="mdlm-align")(execute)(validate_spec(copy.deepcopy(raw)))}
    rl = summary["rl"]["metrics"]
    run = {"before": summary["evaluate_pretrained"]["metrics"]["model"],
           "after": summary["evaluate"]["metrics"]["model"], "rl_train_wall_s": rl["train_wall_s"],
           "reward_evaluations": rl["samples_generated"], "train_reward": rl["train_reward"],
           "forwards_per_rollout": rl["forwards_per_rollout"], "pipeline_wall_s": time.perf_counter() - t0}
    if task == "rna_design":
        run["diversity"] = diversity(ArtifactStore(raw["storage"]["root"]), summary, args, seed)
    return run


def summarise(runs: dict) -> dict:
    """Per task and algorithm: mean and spread over seeds of held-out accuracy and reward, and wall time."""
    out: dict = {}
    for key, run in runs.items():
        task, name, _ = key.split("/")
        out.setdefault(task, {}).setdefault(name, []).append(run)
    table: dict = {}
    for task, by_algorithm in out.items():
        for name, rs in by_algorithm.items():
            row = {f"{when}_{m}": [r[when][m] for r in rs] for when in ("before", "after")
                   for m in ("accuracy", "reward")}
            row["rl_train_wall_s"] = [r["rl_train_wall_s"] for r in rs]
            row["reward_evaluations"] = rs[0]["reward_evaluations"]
            row["mean_gain_accuracy"] = float(np.mean(np.array(row["after_accuracy"]) - row["before_accuracy"]))
            row["mean_gain_reward"] = float(np.mean(np.array(row["after_reward"]) - row["before_reward"]))
            if "diversity" in rs[0]:
                row["diversity"] = {stage: {k: float(np.mean([r["diversity"][stage][k] for r in rs]))
                                            for k in rs[0]["diversity"][stage]} for stage in ("pretrain", "rl")}
            table.setdefault(task, {})[name] = row
    return table


def main() -> None:
    """Run every (task, seed, algorithm), print and write the JSON (seeds outermost within a task)."""
    p = parser(__doc__)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--rl-steps", type=int, default=32)
    p.add_argument("--groups-per-step", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--diversity-targets", type=int, default=20)
    p.add_argument("--diversity-samples", type=int, default=8)
    p.add_argument("--note", default="", help="a line on how this run's sizes were chosen, kept in the JSON config")
    args = open_benchmark(p.parse_args())
    if args.quick:
        vars(args).update(QUICK)
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task, seed, name in itertools.product(args.tasks, args.seeds, args.algorithms):
            runs[f"{task}/{name}/seed{seed}"] = one_run(task, Path(tmp) / f"{task}-{seed}", seed, name, args)
            print(task, name, seed, json.dumps(runs[f"{task}/{name}/seed{seed}"]), flush=True)
            write(args, runs)  # after every run, so a stopped benchmark keeps what it measured


def write(args: argparse.Namespace, runs: dict) -> None:
    """The results JSON of the runs so far (the harness adds the environment)."""
    import RNA

    config = {k: v for k, v in vars(args).items() if k != "out"}
    result = {"config": {**config, "group_size": GROUP_SIZE, "algorithms": ALGORITHMS},
              "viennarna": RNA.__version__, "summary": summarise(runs), "runs": runs}
    write_result("mdlm_align", result, args.out)


if __name__ == "__main__":
    main()

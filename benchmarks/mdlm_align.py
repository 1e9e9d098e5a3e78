"""SDPO and TR2-D2 against coupled-GRPO and GDPO on Countdown and Sudoku, and on RNA design (reward, diversity).

Every number comes from the real pipeline, run as one `diffpipe sweep` per task (through the shared
harness) over the rl stage's `algorithm` x `runtime.seed`: `pipelines/countdown.yaml`,
`pipelines/sudoku.yaml` or `pipelines/rna_design.yaml`, shrunk to CPU size, runs pretrain -> evaluate
the pretrained model -> rl with one algorithm -> sample -> evaluate, so held-out accuracy is the
evaluate stage's (greedy, held-out problems). The cells of a seed share its data and pretrain stages
(computed once; the JSON counts how many ran). Every algorithm gets the same reward evaluations:
steps / num_iterations rollout batches of groups_per_step prompts x group_size rewards (tr2d2:
mcts_iterations x num_children = group_size per prompt). Wall time is the rl stage's training wall
time; cells run one stage at a time (`runtime.max_parallel_stages=1`) so wall times are not shared.

RNA diversity: the spec's `sample_pretrained_draws` / `sample_draws` stages draw `--diversity-samples`
designs at temperature 1 for each of the first `--diversity-targets` held-out structures, and their
evaluate stages report the share of distinct designs and the mean pairwise Hamming distance per target
(in nucleotides), beside the mean base-pair F1 and exact-fold share of those draws.

Sudoku scores partial credit (the exact verifier's share of blanks filled right) besides exact solves.

Prints and writes benchmarks/results/mdlm_align.json through benchmarks/harness.py (commit, libraries,
device, threads, load, date; plus ViennaRNA's version), after every task so a stopped benchmark keeps
what it measured. One thread.

    python benchmarks/mdlm_align.py --seeds 0 1 2
    python benchmarks/mdlm_align.py --quick     # one seed at tiny sizes, to a temporary folder
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import yaml
from harness import REPO, open_benchmark, parser, run_sweep, write_result

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


def spec(task: str, root: Path, args: argparse.Namespace) -> dict:
    """The shipped spec of `task`, CPU-shrunk (the rl algorithm and the seed are the sweep's axes)."""
    setting = TASKS[task]
    raw = yaml.safe_load((REPO / "pipelines" / setting["spec"]).read_text())
    raw["data"].update(setting["data"], **(QUICK_DATA if args.quick else {}))
    raw["model"] = {"arch": "mdlm", "d_model": 64, "num_layers": 2, "num_heads": 4}
    length = setting["block_length"]
    for stage in raw["stages"]:
        if stage["stage"] == "pretrain":
            stage.update(steps=args.pretrain_steps, checkpoint_every=args.pretrain_steps, log_every=100)
        elif stage["stage"] == "sample" and stage.get("samples_per_condition", 1) > 1:
            stage.update(num_samples=args.diversity_targets, samples_per_condition=args.diversity_samples)
        elif stage["stage"] == "sample":
            stage.update(num_samples=raw["data"]["num_test"],
                         scheduler={"name": "BlockRefinementScheduler", "steps": setting["sample_steps"],
                                    "options": {"block_length": length}})
        elif stage["stage"] == "rl":
            stage.update(rewards=setting["rewards"],
                         group_size=GROUP_SIZE, groups_per_step=args.groups_per_step, steps=args.rl_steps,
                         checkpoint_every=args.rl_steps, log_every=args.rl_steps, lr=args.lr)
    raw["storage"] = {"root": str(root)}
    raw["runtime"] = {"device": "cpu", "seed": 0, "num_threads": 1, "max_parallel_stages": 1}
    return raw


def run_task(task: str, workdir: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """One sweep of `task` over algorithms x seeds: per-cell runs, and how often each stage was computed."""
    path = workdir / f"{task}.yaml"
    path.write_text(yaml.safe_dump(spec(task, workdir / "artifacts", args), sort_keys=False))
    length = TASKS[task]["block_length"]
    blocks = {name: {**ALGORITHMS[name], "block_length": length} for name in args.algorithms}
    done = run_sweep(path, {"stages.rl.algorithm": list(blocks.values()), "runtime.seed": args.seeds}, 1, [],
                     workdir / f"{task}-sweep")
    names = {json.dumps(block, sort_keys=True): name for name, block in blocks.items()}
    runs, computed = {}, {}
    for row in done.report["cells"]:
        name = names[json.dumps(row["params"]["stages.rl.algorithm"], sort_keys=True)]
        stages = done.cells[row["cell"]]
        runs[f"{task}/{name}/seed{row['seed']}"] = one_run(stages)
        for stage, entry in stages.items():
            computed.setdefault(stage, set()).add(entry["cache_key"])
    return runs, {"sweep_wall_s": done.wall_s, "cells": len(runs),
                  "distinct_stage_artifacts": {stage: len(keys) for stage, keys in computed.items()}}


def one_run(stages: dict) -> dict:
    """Held-out scores before and after rl, rl metrics and wall time of one cell (and RNA draws' diversity)."""
    rl = stages["rl"]["metrics"]
    run = {"before": stages["evaluate_pretrained"]["metrics"]["model"],
           "after": stages["evaluate"]["metrics"]["model"], "rl_train_wall_s": rl["train_wall_s"],
           "reward_evaluations": rl["samples_generated"], "train_reward": rl["train_reward"],
           "forwards_per_rollout": rl["forwards_per_rollout"]}
    if "evaluate_draws" in stages:
        run["diversity"] = {when: draws(stages[f"evaluate_{stage}"]["metrics"]["model"])
                            for when, stage in (("pretrain", "pretrained_draws"), ("rl", "draws"))}
    return run


def draws(model: dict) -> dict:
    """Diversity and scores of the sampled designs, as the evaluate stage reported them."""
    return {"distinct_share": model["distinct_share"], "mean_pairwise_hamming": model["mean_pairwise_hamming"],
            "sampled_f1": model["reward"], "sampled_exact": model["accuracy"]}


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
    sharing: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            task_runs, sharing[task] = run_task(task, Path(tmp), args)
            runs.update(task_runs)
            print(task, json.dumps(sharing[task]), flush=True)
            write(args, runs, sharing)  # after every task, so a stopped benchmark keeps what it measured


def write(args: argparse.Namespace, runs: dict, sharing: dict) -> None:
    """The results JSON of the runs so far (the harness adds the environment)."""
    import RNA

    config = {k: v for k, v in vars(args).items() if k != "out"}
    result = {"config": {**config, "group_size": GROUP_SIZE, "algorithms": ALGORITHMS},
              "viennarna": RNA.__version__, "summary": summarise(runs), "sharing": sharing, "runs": runs}
    write_result("mdlm_align", result, args.out)


if __name__ == "__main__":
    main()

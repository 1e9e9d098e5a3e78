"""Model collapse: quality, memorisation and entropy per generation for none / random / entropy selection.

Runs `pipelines/digits_self_train.yaml` (images) or `pipelines/rna_self_train.yaml` (token sequences:
RNA designs of a masked-diffusion LM) as one `diffpipe sweep` over `stages.self_train.selection` x
`runtime.seed` through the shared harness (each generation a cached `self_train` node), with small models
and small training sets set by `--set` overrides. Generation 0 (the pretrain stage, trained on all real
training data) is computed once per seed and shared by its three policies (the JSON records the sweep's
executed / cached counts per stage).
Per generation it records what the stage measures: the quality of samples against held-out data
(digits: classifier accuracy and Frechet distance; RNA: fold accuracy and base-pair F1 of designs for
held-out structures, share of distinct designs), the memorisation ratio (mean nearest-neighbour
distance of samples to that generation's training set over the same to held-out data of equal number;
1 generalises, towards 0 copies), the share of samples nearer to a training example than half their
held-out distance, and the Kozachenko-Leonenko entropy (k = 1; pixels, or one-hot sequences) of the
training set. The claim tested: entropy (farthest-point) selection slows the drift to memorisation.

Prints and writes benchmarks/results/self_train_collapse.json (digits) or
self_train_collapse_rna.json through benchmarks/harness.py (commit, libraries, device, threads, load,
date). One thread; a busy shared 2-core machine, so wall times are indicative only.

    python benchmarks/self_train_collapse.py --seeds 0 1 2 --generations 5
    python benchmarks/self_train_collapse.py --data rna_design --seeds 0 1 2 --generations 5
    python benchmarks/self_train_collapse.py --quick   # tiny sizes, to a temporary folder
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from harness import REPO, open_benchmark, parser, run_sweep, stage_counts, write_result

SELECTIONS = ("none", "random", "entropy")
COMMON = {"memorisation_ratio": ("memorisation", "memorisation_ratio"),
          "copy_fraction": ("memorisation", "copy_fraction"),
          "nn_distance_train": ("memorisation", "nn_distance_train"),
          "training_set_entropy": ("entropy", "training_set"),
          "sample_entropy": ("sample_entropy",)}
DATA = {  # per kind of data: shipped spec, results file, the quality metrics tracked, CPU shrinking
    "digits": {"spec": "digits_self_train.yaml", "result": "self_train_collapse",
               "quality": ("classifier_accuracy", "frechet_distance"),
               "model": {"arch": "unet2d", "block_out_channels": [16, 32], "norm_num_groups": 8, "attention": False},
               "scheduler": lambda args: {"name": "FlowMatchEulerDiscreteScheduler", "steps": args.sampler_steps}},
    "rna_design": {"spec": "rna_self_train.yaml", "result": "self_train_collapse_rna",
                   "quality": ("accuracy", "reward", "unique_sequences"), "model": None, "scheduler": None},
}
QUICK = {"seeds": [0], "generations": 2, "steps": 20, "data_size": 32, "eval_samples": 32, "sampler_steps": 4}
"""--quick: sizes that only check the loop runs (results to a temporary folder unless --out names one)."""


def tracked(data: str) -> dict[str, tuple[str, ...]]:
    """The metrics followed over generations for this kind of data (path inside a generation's metrics)."""
    return {**{name: ("quality", name) for name in DATA[data]["quality"]}, **COMMON}


def overrides(root: Path, args: argparse.Namespace) -> list[str]:
    """`--set` options shrinking the shipped spec for a CPU (the sweep sets selection and runtime.seed)."""
    setting = DATA[args.data]
    small = {"steps": args.steps, "batch_size": 64, "checkpoint_every": args.steps, "log_every": args.steps,
             "warmup_steps": min(20, args.steps // 2)}
    grown = {**small, "generations": args.generations, "data_size": args.data_size,
             "real_fraction": args.real_fraction, "eval_samples": args.eval_samples}
    out = [f"stages.pretrain.{k}={v}" for k, v in small.items()]
    out += [f"stages.self_train.{k}={v}" for k, v in grown.items()]
    if setting["model"] is not None:
        out.append(f"model={json.dumps(setting['model'])}")
    if setting["scheduler"] is not None:
        out.append(f"stages.self_train.scheduler={json.dumps(setting['scheduler'](args))}")
    return [*out, f"storage.root={root}", "runtime.device=cpu", "runtime.num_threads=1",
            "runtime.max_parallel_stages=1"]


def pick(metrics: dict, path: tuple[str, ...]) -> float:
    """A nested metric."""
    for key in path:
        metrics = metrics[key]
    return float(metrics)


def curves(stages: dict[str, dict], data: str) -> dict[str, list[float]]:
    """Each tracked metric against generation 0..N (the training-set entropy from generation 1), from one
    cell's stages as `diffpipe status` reads them (generation nodes `self_train.gen<k>`)."""
    gens = [e["metrics"] for _, e in sorted(((int(name.rsplit("gen", 1)[1]), e) for name, e in stages.items()
                                             if e["stage"] == "self_train"), key=lambda pair: pair[0])]
    zero = gens[0]["generation_0"]
    out = {}
    for name, path in tracked(data).items():
        first = [] if path[0] == "entropy" else [pick(zero, path)]
        out[name] = first + [pick(m, path) for m in gens]
    return out


def summarise(runs: dict, data: str) -> dict:
    """Mean over seeds of each metric per generation, per selection."""
    out = {}
    for selection in SELECTIONS:
        per_seed = [r for k, r in runs.items() if k.startswith(f"{selection}/")]
        if per_seed:
            out[selection] = {name: np.mean([r["curves"][name] for r in per_seed], axis=0).round(4).tolist()
                              for name in tracked(data)}
    return out


def main() -> None:
    """Run every (seed, selection), print and write the JSON."""
    p = parser(__doc__)
    p.add_argument("--data", choices=list(DATA), default="digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--data-size", type=int, default=256)
    p.add_argument("--real-fraction", type=float, default=0.0)
    p.add_argument("--eval-samples", type=int, default=256)
    p.add_argument("--sampler-steps", type=int, default=10)
    args = open_benchmark(p.parse_args())
    if args.quick:
        vars(args).update(QUICK)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        done = run_sweep(REPO / "pipelines" / DATA[args.data]["spec"],
                         {"stages.self_train.selection": list(SELECTIONS), "runtime.seed": args.seeds}, 1,
                         overrides(root / "store", args), root / "sweep")
        for row in done.report["cells"]:
            selection = row["params"]["stages.self_train.selection"]
            runs[f"{selection}/seed{row['seed']}"] = {"curves": curves(done.cells[row["cell"]], args.data)}
            print(selection, row["seed"], json.dumps(runs[f"{selection}/seed{row['seed']}"]["curves"]), flush=True)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    result = {"config": config, "mean_over_seeds": summarise(runs, args.data), "runs": runs,
              "sweep_wall_s": done.wall_s, "stage_counts": stage_counts(done.report),
              "notes": "curves start at generation 0 (the pretrain model, from generation 1's `generation_0` "
                       "block) except training_set_entropy, which starts at generation 1's training set"}
    write_result(DATA[args.data]["result"], result, args.out)


if __name__ == "__main__":
    main()

"""Model collapse on digits: quality, memorisation and entropy per generation for none / random / entropy selection.

Runs `pipelines/digits_self_train.yaml` through the real pipeline (each generation a cached
`self_train` node) with a small UNet and small training sets, for each selection policy and seed.
Generation 0 (the pretrain stage, trained on all 1437 real training digits) is shared by the three
policies of a seed. Per generation it records what the stage measures: classifier accuracy and
Frechet distance of the samples against held-out digits, the memorisation ratio (mean nearest-neighbour
distance of samples to that generation's training set over the same to held-out digits of equal
number; 1 generalises, towards 0 copies), the share of samples nearer to a training image than half
their held-out distance, and the Kozachenko-Leonenko entropy (pixels, k = 1) of the training set.
The claim tested: entropy (farthest-point) selection slows the drift to memorisation.

Prints and writes benchmarks/results/self_train_collapse.json. One thread; a busy shared 2-core
machine, so wall times are indicative only.

    python benchmarks/self_train_collapse.py --seeds 0 1 2 --generations 5
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from prefect import flow

import diffpipe
from diffpipe.flows.pipeline import execute
from diffpipe.flows.spec_loading import validate_spec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "self_train_collapse.json"
SELECTIONS = ("none", "random", "entropy")
TRACKED = {"classifier_accuracy": ("quality", "classifier_accuracy"),
           "frechet_distance": ("quality", "frechet_distance"),
           "memorisation_ratio": ("memorisation", "memorisation_ratio"),
           "copy_fraction": ("memorisation", "copy_fraction"),
           "nn_distance_train": ("memorisation", "nn_distance_train"),
           "training_set_entropy": ("entropy", "training_set"),
           "sample_entropy": ("sample_entropy",)}


def spec(root: Path, seed: int, selection: str, args: argparse.Namespace) -> dict:
    """The shipped spec, CPU-shrunk, for one seed and selection policy."""
    raw = yaml.safe_load((REPO / "pipelines" / "digits_self_train.yaml").read_text())
    raw["model"] = {"arch": "unet2d", "block_out_channels": [16, 32], "norm_num_groups": 8, "attention": False}
    small = {"steps": args.steps, "batch_size": 64, "checkpoint_every": args.steps, "log_every": args.steps,
             "warmup_steps": 20}
    raw["stages"][0].update(small)
    raw["stages"][1].update(small, generations=args.generations, selection=selection, data_size=args.data_size,
                            real_fraction=args.real_fraction, eval_samples=args.eval_samples,
                            scheduler={"name": "FlowMatchEulerDiscreteScheduler", "steps": args.sampler_steps})
    raw["storage"] = {"root": str(root)}
    raw["runtime"] = {"device": "cpu", "seed": seed, "num_threads": 1}
    return raw


def pick(metrics: dict, path: tuple[str, ...]) -> float:
    """A nested metric."""
    for key in path:
        metrics = metrics[key]
    return float(metrics)


def curves(summary: list[dict]) -> dict[str, list[float]]:
    """Each tracked metric against generation 0..N."""
    gens = [s["metrics"] for s in summary if s["stage"] == "self_train"]
    zero = gens[0]["generation_0"]
    out = {}
    for name, path in TRACKED.items():
        first = [] if path[0] in ("entropy",) else [pick(zero, path)]
        out[name] = first + [pick(m, path) for m in gens]
    return out


def versions() -> dict[str, str]:
    """Commit, library versions, device, threads, date."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import diffusers

    return {"commit": commit, "diffpipe": diffpipe.__version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "device": "cpu", "threads": torch.get_num_threads(), "date": datetime.now(UTC).isoformat()}


def summarise(runs: dict) -> dict:
    """Mean over seeds of each metric per generation, per selection; and the last generation's ranking."""
    out = {}
    for selection in SELECTIONS:
        per_seed = [r for k, r in runs.items() if k.startswith(f"{selection}/")]
        if not per_seed:
            continue
        out[selection] = {name: np.mean([r["curves"][name] for r in per_seed], axis=0).round(4).tolist()
                          for name in TRACKED}
    return out


def main() -> None:
    """Run every (seed, selection), print and write the JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--data-size", type=int, default=256)
    parser.add_argument("--real-fraction", type=float, default=0.0)
    parser.add_argument("--eval-samples", type=int, default=256)
    parser.add_argument("--sampler-steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    environment = versions()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for selection in SELECTIONS:
                t0 = time.perf_counter()
                raw = spec(Path(tmp) / f"seed{seed}", seed, selection, args)
                summary = flow(name="self-train-collapse")(execute)(validate_spec(copy.deepcopy(raw)))
                runs[f"{selection}/seed{seed}"] = {"curves": curves(summary), "wall_s": time.perf_counter() - t0}
                print(selection, seed, json.dumps(runs[f"{selection}/seed{seed}"]["curves"]), flush=True)
    result = {"config": vars(args), "environment": environment, "mean_over_seeds": summarise(runs), "runs": runs,
              "notes": "curves start at generation 0 (the pretrain model, from generation 1's `generation_0` "
                       "block) except training_set_entropy, which starts at generation 1's training set"}
    print(json.dumps(result["mean_over_seeds"], indent=1))
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""A compute law for sampling: wall time (and energy, where measured) against FLOPs, per model family.

A sweep of the shipped digits spec (`pipelines/digits.yaml`, `diffpipe sweep` through the shared harness;
8x8, class-conditional) over network size x sampler steps x batch x guidance (classifier-free guidance
doubles the rows of every call) x the sample stage's seed, per family (diffusers UNet2DModel and
DiTTransformer2DModel, 3 sizes each). The spec's stages are cut to its pretrain (one step: the weights
do not change the cost) and its sample stage; each cell's sample metrics give the FLOPs (torch's FLOP
counter on the first network call x evaluations), the sampling loop's wall time and the energy
counters. Cells run one stage at a time (`runtime.max_parallel_stages=1`). The FLOP-counted first call
is slower than the others, so the fitted time is the loop's time without it, scaled back to all calls:
(sampling_wall_s - flop_count_s) x calls / (calls - 1); the median over seeds is used.

Fit per family: log t = a + alpha log C, with R^2; across families the Spearman rank correlation of C
and t over every configuration, and each family's law applied to the other family; held out: each
family's largest network predicted from a fit on its smaller ones (relative errors). Energy: the
stages record RAPL package energy where /sys/class/powercap is readable and NVML energy on a GPU; where
neither is, only time is fitted and the JSON says why. One torch thread; a shared 2-core machine.

    python benchmarks/compute_law.py [--seeds 0 1 2]
    python benchmarks/compute_law.py --quick        # one size per family, one seed: a smoke run, to a temp folder
Writes benchmarks/results/compute_law.json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import REPO, open_benchmark, parser, run_sweep, write_result
from scipy.stats import spearmanr

SPEC = REPO / "pipelines" / "digits.yaml"
STAGE = "stages.sample"
FAMILIES = {
    "unet2d": [{"arch": "unet2d", "block_out_channels": list(c), "norm_num_groups": 8, "layers_per_block": 1}
               for c in ((16, 32), (32, 64), (64, 128))],
    "dit": [{"arch": "dit", "num_layers": n, "num_attention_heads": h, "attention_head_dim": d}
            for n, h, d in ((2, 2, 16), (4, 2, 32), (4, 4, 32))],
}
STEPS, BATCHES, GUIDANCE = [4, 12], [32, 128], [1.0, 2.0]
STAGES = ("[{name: pretrain, stage: pretrain, objective: {kind: flow_matching}, steps: 1, batch_size: 8, "
          "checkpoint_every: 1, warmup_steps: 0}, {name: sample, stage: sample, model: pretrain, "
          "scheduler: {name: FlowMatchEulerDiscreteScheduler, steps: 4}, batch_size: 128}]")
"""The spec's pretrain (one step) and sample stage (every cell's draws in one batch); no evaluation."""


def loop_time(m: dict) -> float:
    """Sampling-loop seconds without the FLOP-counted call, scaled back to every call."""
    calls = m["network_calls"]
    return (m["sampling_wall_s"] - m["flop_count_s"]) * calls / (calls - 1)


def fit(flops: np.ndarray, seconds: np.ndarray) -> dict:
    """log t = a + alpha log C by least squares, with R^2."""
    x, y = np.log(flops), np.log(seconds)
    alpha, a = np.polyfit(x, y, 1)
    residual = y - (a + alpha * x)
    return {"alpha": float(alpha), "log_a": float(a), "r2": float(1 - residual.var() / y.var()), "n": len(x)}


def predict(law: dict, flops: np.ndarray) -> np.ndarray:
    """Seconds the law predicts for FLOPs."""
    return np.exp(law["log_a"] + law["alpha"] * np.log(flops))


def errors(law: dict, rows: list[dict]) -> np.ndarray:
    """Absolute relative errors of the law's predicted seconds on `rows`."""
    truth = np.array([r["seconds"] for r in rows])
    return np.abs(predict(law, np.array([r["flops"] for r in rows])) - truth) / truth


def configurations(done, families: dict[str, list[dict]], seeds: list[int]) -> list[dict]:
    """One row per (model, steps, batch, guidance): FLOPs, median loop time over seeds, energy counters."""
    models = {json.dumps(m, sort_keys=True): (family, size) for family, ms in families.items()
              for size, m in enumerate(ms)}
    groups: dict[tuple, list[dict]] = {}
    for row in done.report["cells"]:
        p = row["params"]
        key = (json.dumps(p["model"], sort_keys=True), p[f"{STAGE}.scheduler.steps"], p[f"{STAGE}.num_samples"],
               p[f"{STAGE}.guidance_scale"])
        groups.setdefault(key, []).append(done.cells[row["cell"]]["sample"]["metrics"])
    rows = []
    for (model, steps, batch, guidance), runs in groups.items():
        assert len(runs) == len(seeds)
        family, size = models[model]
        rows.append({"family": family, "size": size, "model": json.loads(model), "steps": steps, "batch": batch,
                     "guidance": guidance, "flops": runs[0]["sampling_flops"],
                     "flops_per_evaluation": runs[0]["flops_per_evaluation"],
                     "seconds": statistics.median(loop_time(m) for m in runs),
                     "raw_seconds": statistics.median(m["sampling_wall_s"] for m in runs),
                     "seconds_per_seed": [loop_time(m) for m in runs],
                     "cpu_energy_j": [m["cpu_energy_j"] for m in runs],
                     "gpu_energy_j": [m.get("gpu_energy_j") for m in runs]})
    return rows


def laws(rows: list[dict], families: list[str]) -> dict:
    """Per-family fits, held-out largest size, rank correlation across families and cross-family errors."""
    out: dict = {"laws": {}, "held_out_largest_size": {}, "cross_family": {}}
    for family in families:
        mine = [r for r in rows if r["family"] == family]
        flops = np.array([r["flops"] for r in mine])
        out["laws"][family] = {"loop_time": fit(flops, np.array([r["seconds"] for r in mine])),
                               "raw_wall_time": fit(flops, np.array([r["raw_seconds"] for r in mine]))}
        largest = max(r["size"] for r in mine)
        train, test = [r for r in mine if r["size"] < largest], [r for r in mine if r["size"] == largest]
        if train:
            law = fit(np.array([r["flops"] for r in train]), np.array([r["seconds"] for r in train]))
            error = errors(law, test)
            out["held_out_largest_size"][family] = {
                "fit_on_smaller_sizes": law, "median_abs_relative_error": float(np.median(error)),
                "max_abs_relative_error": float(error.max()), "n_held_out": len(test)}
    rho, p = spearmanr([r["flops"] for r in rows], [r["seconds"] for r in rows])
    out["rank_correlation_all"] = {"spearman": float(rho), "p_value": float(p), "n": len(rows)}
    for a in families:
        for b in families:
            if a != b:
                other = [r for r in rows if r["family"] == b]
                law = out["laws"][a]["loop_time"]
                out["cross_family"][f"{a}_law_on_{b}"] = {
                    "median_abs_relative_error": float(np.median(errors(law, other))),
                    "spearman": float(spearmanr(predict(law, np.array([r["flops"] for r in other])),
                                                [r["seconds"] for r in other])[0])}
    return out


def energy_note(rows: list[dict]) -> dict:
    """What the stages' energy counters said: measured joules, or why there are none."""
    cpu = {str(v) for r in rows for v in r["cpu_energy_j"] if isinstance(v, str)}
    gpu = {v for r in rows for v in r["gpu_energy_j"] if isinstance(v, str)}
    measured = all(isinstance(v, float) for r in rows for v in r["cpu_energy_j"])
    return {"cpu_energy_measured": measured, "cpu_energy_j": sorted(cpu) or "measured per stage (see runs)",
            "gpu_energy_j": sorted(gpu) or "not recorded: no CUDA device", "fitted": "time and energy" if measured else
            "time only: no energy counter was readable on this machine (RAPL under /sys/class/powercap "
            "not readable, no GPU)"}


def main() -> None:
    """Sweep the grid, fit the law per family, print and write JSON."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sample stage seeds")
    options.add_argument("--root", type=Path, default=None, help="artifact root, reused as a cache by later runs")
    args = open_benchmark(options.parse_args())
    families = {f: ms[:1] for f, ms in FAMILIES.items()} if args.quick else FAMILIES
    steps, batches = ([2, 4], [8]) if args.quick else (STEPS, BATCHES)
    seeds = args.seeds[:1] if args.quick else args.seeds
    root = args.root or Path(tempfile.gettempdir()) / ("diffpipe_compute_law_quick" if args.quick else
                                                       "diffpipe_compute_law")
    overrides = [f"storage.root={root}", "runtime.device=cpu", "runtime.max_parallel_stages=1", f"stages={STAGES}",
                 f"{STAGE}.batch_size={max(batches)}"]
    grid = {"model": [m for ms in families.values() for m in ms], f"{STAGE}.scheduler.steps": steps,
            f"{STAGE}.num_samples": batches, f"{STAGE}.guidance_scale": GUIDANCE, f"{STAGE}.seed": seeds}
    t0 = time.perf_counter()
    done = run_sweep(SPEC, grid, 1, overrides, root / "sweep")
    rows = configurations(done, families, seeds)
    result = {"spec": "pipelines/digits.yaml", "overrides": overrides,
              "config": {**vars(args), "seeds": seeds, "steps": steps, "batches": batches, "guidance": GUIDANCE,
                         "families": families, "root": str(root), "out": str(args.out)},
              **laws(rows, list(families)), "energy": energy_note(rows), "runs": rows, "sweep_wall_s": done.wall_s,
              "benchmark_wall_s": time.perf_counter() - t0}
    write_result("compute_law", result, args.out)


if __name__ == "__main__":
    main()

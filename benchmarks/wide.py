"""Running wide: independent stages at once, and sweeps whose cells share stages, measured through the CLI.

    python benchmarks/wide.py cei          # pipelines/cei.yaml: concurrent / serial wall time, same digests
    python benchmarks/wide.py rl_sweep     # 4 algorithms x 3 seeds on digits: one sweep / 12 separate runs
    python benchmarks/wide.py rl_sweep --dask   # the same sweep on a 2-worker Dask cluster on loopback

Step counts are cut with --set overrides so each measurement takes minutes on a shared 2-core machine
(the JSON records the overrides); both arms of a ratio run in this process's session one after the other,
with one torch thread per stage, on fresh artifact roots. Writes benchmarks/results/wide_<what>.json
(--quick: a smoke run with even fewer steps, written to a temporary folder).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from harness import REPO, open_benchmark, parser, run_diffpipe, set_options, stage_counts, write_result

from diffpipe.flows.comparison import cell_metrics

CEI_QUICK = ["stages.diffusion.steps=300", "stages.baseline.steps=300", "stages.diffusion.checkpoint_every=300",
             "stages.baseline.checkpoint_every=300", "data.geometries_per_molecule=8",
             "stages.sample_diffusion.num_samples=60", "stages.sample_baseline.num_samples=60",
             "runtime.device=cpu", "runtime.num_threads=1"]
RL_QUICK = ["model.block_out_channels=[16,32]", "model.norm_num_groups=8", "stages.pretrain.steps=60",
            "stages.pretrain.batch_size=32", "stages.pretrain.checkpoint_every=60", "stages.rl.steps=4",
            "stages.rl.group_size=4", "stages.rl.groups_per_step=2", "stages.rl.checkpoint_every=4",
            "stages.sample.num_samples=50", "stages.sample.scheduler.steps=8", "runtime.device=cpu",
            "runtime.num_threads=1"]
SMOKE = {"cei": ["stages.diffusion.steps=30", "stages.baseline.steps=30", "stages.diffusion.checkpoint_every=30",
                 "stages.baseline.checkpoint_every=30"],
         "rl_sweep": ["stages.pretrain.steps=20", "stages.pretrain.checkpoint_every=20", "stages.rl.steps=2",
                      "stages.rl.checkpoint_every=2"]}
"""With --quick, on top of the overrides above: a smoke run of minutes, not a measurement."""
ALGORITHMS = ("[{algorithm: flow_grpo, sampler_steps: 6}, {algorithm: diffusion_nft, sampler_steps: 6, "
              "train_timesteps: 2}, {algorithm: awm, sampler_steps: 6, timesteps_per_sample: 2}, "
              "{algorithm: ddrl, sampler_steps: 6, timesteps_per_sample: 2}]")


def cei(work: Path, quick: bool) -> dict:
    """pipelines/cei.yaml with the diffusion model and the baseline side by side vs one stage at a time."""
    arms = {}
    for name, parallel in (("serial", 1), ("concurrent", 2)):
        sets = [*CEI_QUICK, *(SMOKE["cei"] if quick else []), f"storage.root={work / name}",
                f"runtime.max_parallel_stages={parallel}"]
        done = run_diffpipe(["run", str(REPO / "pipelines" / "cei.yaml"), *set_options(sets)], work / name)
        stages = done.doc["stages"]
        arms[name] = {"wall_s": done.wall_s, "digests": {s["name"]: s["artifact"]["sha256"] for s in stages},
                      "states": {s["name"]: s["state"] for s in stages}}
        print(f"cei {name}: {done.wall_s:.1f} s", flush=True)
    return {"what": "pipelines/cei.yaml, concurrent (max_parallel_stages=2) / serial (1), 1 torch thread per stage",
            "overrides": CEI_QUICK, "serial": arms["serial"], "concurrent": arms["concurrent"],
            "wall_ratio_concurrent_over_serial": arms["concurrent"]["wall_s"] / arms["serial"]["wall_s"],
            "bit_identical": arms["concurrent"]["digests"] == arms["serial"]["digests"]}


def rl_sweep(work: Path, dask: bool, quick: bool) -> dict:
    """4 RL algorithms x 3 seeds on digits: one sweep, cells at once (threads or Dask), against the same 12 cells
    as 12 separate `diffpipe run`s one after another, each on its own fresh root (nothing shared: 12 pretrains)."""
    spec, smoke, seeds = str(REPO / "pipelines" / "digits_rl.yaml"), SMOKE["rl_sweep"] if quick else [], range(3)
    cluster, extra = None, []
    try:
        if dask:
            cluster = _start_dask(work)
            extra = ["runtime.dask_address=tcp://127.0.0.1:8797"]
        sets = [*RL_QUICK, *smoke, *extra, f"storage.root={work / 'concurrent'}", "runtime.max_parallel_stages=2"]
        done = run_diffpipe(["sweep", spec, "--grid", f"stages.rl.algorithm={ALGORITHMS}", "--repeat-seeds", "3",
                             *set_options(sets)], work / "concurrent")
        report = done.doc
        concurrent = {"wall_s": done.wall_s, "cpu_s": done.cpu_s, "cells": len(report["cells"]),
                      "stage_executions": stage_counts(report)}
        metrics = {(c["params"]["stages.rl.algorithm"]["algorithm"], c["seed"]): c["metrics"] for c in report["cells"]}
        print(f"rl sweep concurrent: {done.wall_s:.1f} s, executions {concurrent['stage_executions']}", flush=True)
    finally:
        for proc in cluster or []:
            proc.terminate()
            proc.wait(timeout=30)
    serial = {"wall_s": 0.0, "cpu_s": 0.0, "runs": 0, "stage_executions": {}}
    same = True
    for algorithm in yaml.safe_load(ALGORITHMS):
        for seed in seeds:
            name = f"serial_{algorithm['algorithm']}_{seed}"
            sets = [*RL_QUICK, *smoke, f"storage.root={work / name}", "runtime.max_parallel_stages=1",
                    f"runtime.seed={seed}", f"stages.rl.algorithm={json.dumps(algorithm)}"]
            run = run_diffpipe(["run", spec, *set_options(sets)], work / name)
            serial["wall_s"] += run.wall_s
            serial["cpu_s"] += run.cpu_s
            serial["runs"] += 1
            for stage in run.doc["stages"]:
                counts = serial["stage_executions"].setdefault(stage["name"], {})
                counts[stage["state"]] = counts.get(stage["state"], 0) + 1
            same &= cell_metrics(run.doc["stages"]) == metrics[(algorithm["algorithm"], seed)]
            print(f"rl run {name}: {run.wall_s:.1f} s", flush=True)
    runner = "a 2-worker Dask cluster on 127.0.0.1 (DaskTaskRunner), 1 thread each" if dask else "threads"
    return {"what": f"digits_rl, 4 algorithms x 3 seeds = 12 cells: one sweep on {runner} (max_parallel_stages=2, "
                    "shared stages once) / serial: the 12 cells as separate `diffpipe run`s one after another, "
                    "each on a fresh root (max_parallel_stages=1)",
            "overrides": RL_QUICK, "serial": serial, "concurrent": concurrent,
            "pretrain_executions": {"concurrent": concurrent["stage_executions"]["pretrain"].get("executed", 0),
                                    "serial": serial["stage_executions"]["pretrain"].get("executed", 0)},
            "wall_ratio_concurrent_over_serial": concurrent["wall_s"] / serial["wall_s"],
            "same_metrics": same}


def _start_dask(work: Path) -> list[subprocess.Popen]:
    """A distributed scheduler and two 1-thread workers on loopback."""
    bin_dir, quiet = Path(sys.executable).parent, {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "8797",
                               "--no-dashboard"], **quiet)]
    time.sleep(5)
    for i in range(2):
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", "tcp://127.0.0.1:8797", "--nthreads", "1",
                                       "--no-dashboard", "--name", f"w{i}"], **quiet))
    time.sleep(10)
    return procs


def main() -> None:
    """Run one measurement and write its JSON."""
    options = parser(__doc__)
    options.add_argument("what", choices=["cei", "rl_sweep"])
    options.add_argument("--dask", action="store_true", help="rl_sweep: run the concurrent arm on Dask")
    args = open_benchmark(options.parse_args())
    with tempfile.TemporaryDirectory(prefix="diffpipe-wide-") as tmp:
        result = cei(Path(tmp), args.quick) if args.what == "cei" else rl_sweep(Path(tmp), args.dask, args.quick)
    result["note"] = ("step counts cut with --set so each arm takes minutes; the environment's load average says "
                      "how busy the machine was (ratios on a shared machine are noisy)")
    write_result(f"wide_{args.what}{'_dask' if args.dask else ''}", result, args.out)


if __name__ == "__main__":
    main()

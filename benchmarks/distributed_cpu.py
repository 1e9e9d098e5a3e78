"""CPU scaling of a training stage: steps/s with 2 processes x 1 thread over 1 process x 1 thread, same global batch.

Both sides are the real `pretrain` stage on a real digits data artifact: one process calls the stage
function (torch set to one thread); two processes go through the pipeline's launcher (torchrun, gloo,
DDP), each rank computing half of the global batch. `steps_per_s` is the training loop's own
measurement (process start-up excluded; the launch's wall time with start-up is reported beside it),
as is the CPU time per step (`train_cpu_s`, rank 0's), which the machine's load inflates far less.
A third arm runs one process on half the global batch: a rank's share of the work with no
communication, so `one_process_half_batch` CPU seconds per step against rank 0's tells the cost of
the collectives (and of drawing the global batch on every rank) apart from a small batch's lower
efficiency. Runs alternate to share the machine's noise and the ratio of medians is reported, with the
load average around each run: on a shared machine a ratio below the target may only mean the cores
were busy. No GPU numbers are produced here. Results go through benchmarks/harness.py.

    python benchmarks/distributed_cpu.py [--steps 40] [--repeats 3]
    python benchmarks/distributed_cpu.py --quick     # a few steps, to a temporary folder
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from harness import REPO, open_benchmark, parser, write_result

from diffpipe.flows.plan import node_key, nodes
from diffpipe.flows.spec_loading import load_spec
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.launch import stage_function
from diffpipe.tasks.registry import get_domain

ARMS = ("one_process", "two_processes", "one_process_half_batch")
"""1 process x global batch, 2 processes x half of it each (DDP), 1 process x half of it (a rank's share alone)."""


def spec_for(root: str, steps: int, batch: int, nproc: int):
    """The shipped digits spec: pretrain only, `steps` steps of a global batch `batch`, on `nproc` processes."""
    return load_spec(REPO / "pipelines" / "digits.yaml", [
        f"storage.root={root}", "runtime.device=cpu", "runtime.num_threads=1", f"stages.pretrain.steps={steps}",
        f"stages.pretrain.batch_size={batch}", f"stages.pretrain.checkpoint_every={steps}",
        f"runtime.distributed.nproc_per_node={nproc}"])


def timed_run(spec, store: ArtifactStore, data_ref, key: str) -> dict:
    """One run of the pretrain stage (in this process or launched): its steps/s, wall time and the load around it."""
    store.clear_run(key)
    before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(spec, "pretrain", key, {"data": data_ref}, store, Path(tmp), log=lambda m: None,
                           progress=False)
        out = stage_function("pretrain", spec.runtime)(ctx)
    wall = time.perf_counter() - t0
    store.clear_run(key)
    steps = spec.stages[0].steps
    return {"steps_per_s": out.metrics["steps_per_s"], "cpu_s_per_step": out.metrics["train_cpu_s"] / steps,
            "processes": out.metrics["processes"], "wall_s": wall, "load_before": before,
            "load_after": os.getloadavg()[0]}


def main() -> None:
    """Alternate the three arms; write benchmarks/results/distributed_cpu.json."""
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = open_benchmark(p.parse_args())
    if args.quick:
        args.steps, args.repeats = 6, 1
    with tempfile.TemporaryDirectory() as root:
        specs = {"one_process": spec_for(root, args.steps, args.batch_size, 1),
                 "two_processes": spec_for(root, args.steps, args.batch_size, 2),
                 "one_process_half_batch": spec_for(root, args.steps, args.batch_size // 2, 1)}
        one = specs["one_process"]
        store = ArtifactStore(one.storage.root)
        key, _ = node_key(one, nodes(one)[0], {})
        with tempfile.TemporaryDirectory() as tmp:
            out = get_domain("digits").build(StageContext(one, "data", key, {}, store, Path(tmp), progress=False))
            data_ref = store.publish(Path(tmp), out.kind, {})
        runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for _ in range(args.repeats):
            for i, arm in enumerate(ARMS):
                runs[arm].append(timed_run(specs[arm], store, data_ref, f"bench-{i}-" + "0" * 56))
    median = {k: statistics.median(r["steps_per_s"] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r["cpu_s_per_step"] for r in v) for k, v in runs.items()}
    result = {
        "what": "pretrain steps/s, 2 processes x 1 thread (torchrun, gloo, DDP) / 1 process x 1 thread, "
                "same global batch, the stage's own loop timing",
        "command": "python benchmarks/distributed_cpu.py" + (" --quick" if args.quick else
                                                              f" --steps {args.steps} --repeats {args.repeats}"),
        "steps": args.steps, "global_batch_size": args.batch_size, "threads_per_process": 1,
        "model": one.model.model_dump(mode="json"), "runs": runs, "median_steps_per_s": median,
        "ratio_of_medians": median["two_processes"] / median["one_process"], "target": ">= 1.7 on 2 cores",
        "median_cpu_s_per_step": cpu,
        "cpu_time_ratio": cpu["one_process"] / cpu["two_processes"],
        "cpu_time_ratio_means": "one process's CPU seconds per step over rank 0's: the speed-up two idle cores "
                                "would give if ranks never waited for each other (an upper bound that the load "
                                "distorts less than it distorts steps/s)",
        "half_batch_cpu_time_ratio": cpu["one_process"] / cpu["one_process_half_batch"],
        "half_batch_cpu_time_ratio_means": "one process's CPU seconds per step over those of one process on half "
                                           "the batch: the speed-up with free collectives, limited only by a "
                                           "half batch's lower efficiency",
        "rank_overhead_cpu_s_per_step": cpu["two_processes"] - cpu["one_process_half_batch"],
        "rank_overhead_means": "rank 0's CPU seconds per step beyond a lone process's on the same half batch: "
                               "gloo all-reduce of the gradients, DDP's buckets, the loss / stop all-reduces, "
                               "the global batch drawn on every rank (and busy waits for the other rank)",
        "usable_cores": len(os.sched_getaffinity(0)),
        "note": "the machine is shared with other jobs; the load average (1 min) around each run says how busy "
                "it was: with a load above the core count the ratio measures contention, not scaling",
        "gpu": "not measured: no GPU was available in this session (single-GPU steps/s, bf16 vs fp32, MFU and "
               "peak memory of the full-profile CEI and climate models are still to be done)",
    }
    write_result("distributed_cpu", result, args.out)


if __name__ == "__main__":
    main()

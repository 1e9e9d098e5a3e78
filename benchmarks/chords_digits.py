"""CHORDS on digits: wall-time speed-up over sequential Euler at equal quality, 2 worker processes.

A sweep of the shipped digits spec (`pipelines/digits.yaml`, `diffpipe sweep` through the shared harness)
with the model of benchmarks/search_digits.py (same overrides, same default artifact root, so the same
cached checkpoint) over the `sample` stage's `search:` block x its `seed`: no search (plain
FlowMatchEuler, T steps, one process) and `{method: chords, cores: 2}` with several start steps of
core 1, all from the same noise per seed, each scored by the spec's `evaluate` stage. Reported per
seed: the wall time of the sampling loop (plain: `sampling_wall_s`; CHORDS: `search_wall_s`, which
includes spawning the two workers), the speed-up, the latency in network rounds, the mean absolute
difference from the sequential samples, and the Frechet distance of both (equal quality = the
difference from the sequential solve is small against the FD's own noise). The hit is 0 (core 1's
finish): on 2 cores hit 1 is core 0, the sequential solve itself. Cells run one stage at a time
(`runtime.max_parallel_stages=1`), so the two workers have the machine's 2 cores to themselves apart
from other users' work.

    python benchmarks/chords_digits.py [--seeds 0 1 2] [--steps 50] [--starts 10 17 25]
    python benchmarks/chords_digits.py --quick      # a smoke run of minutes, written to a temp folder
Writes benchmarks/results/chords_digits.json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import REPO, open_benchmark, parser, run_sweep, write_result
from search_digits import STAGE, digits_overrides

from diffpipe.schemas import ArtifactRef
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import open_dataset

SPEC = REPO / "pipelines" / "digits.yaml"


def samples(store: ArtifactStore, entry: dict) -> np.ndarray:
    """The x array of the samples artifact of a stage's `status` entry."""
    return open_dataset(store.local_path(ArtifactRef.model_validate(entry["artifact"])) / "samples.zarr")["x"].values


def chords(start: int) -> dict:
    """The search block of 2-core CHORDS with core 1 starting at step `start`, returning core 1's finish."""
    return {"method": "chords", "cores": 2, "init_steps": [0, start], "hit": 0}


def main() -> None:
    """Sweep plain and CHORDS sampling x seeds; print and write speed-ups, errors and FDs."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sample stage seeds")
    options.add_argument("--steps", type=int, default=None, help="Euler steps T (default 50, --quick 10)")
    options.add_argument("--starts", type=int, nargs="+", default=None,
                         help="start steps of core 1 (default 10 17 25, --quick 3 5)")
    options.add_argument("--samples", type=int, default=None, help="samples per stage (default 500, --quick 50)")
    options.add_argument("--pretrain-steps", type=int, default=None, help="default 800 (--quick 20)")
    options.add_argument("--root", type=Path, default=None, help="artifact root (default search_digits.py's)")
    args = open_benchmark(options.parse_args())
    steps, starts = args.steps or (10 if args.quick else 50), args.starts or ([3, 5] if args.quick else [10, 17, 25])
    n, pretrain = args.samples or (50 if args.quick else 500), args.pretrain_steps or (20 if args.quick else 800)
    root = args.root or Path(tempfile.gettempdir()) / ("diffpipe_search_digits_quick" if args.quick else
                                                       "diffpipe_search_digits")
    overrides = digits_overrides(root, pretrain, n, steps)
    blocks = [None, *(chords(s) for s in starts)]
    t0 = time.perf_counter()
    done = run_sweep(SPEC, {f"{STAGE}.search": blocks, f"{STAGE}.seed": args.seeds}, 1, overrides, root / "chords")
    store = ArtifactStore(str(root))
    cells = {(json.dumps(row["params"][f"{STAGE}.search"]), row["params"][f"{STAGE}.seed"]): done.cells[row["cell"]]
             for row in done.report["cells"]}
    rows = []
    for seed in args.seeds:
        plain = cells[(json.dumps(None), seed)]
        plain_wall, plain_fd = plain["sample"]["metrics"]["sampling_wall_s"], \
            plain["evaluate"]["metrics"]["model"]["frechet_distance"]
        reference = samples(store, plain["sample"])
        for start in starts:
            cell = cells[(json.dumps(chords(start)), seed)]
            m = cell["sample"]["metrics"]
            rows.append({"seed": seed, "core1_start": start, "plain_wall_s": plain_wall,
                         "chords_wall_s": m["search_wall_s"], "wall_speedup": plain_wall / m["search_wall_s"],
                         "rounds": m["search_rounds"], "speedup_in_rounds": m["search_speedup_in_rounds"],
                         "nfe_per_sample": m["nfe_per_sample"],
                         "mean_abs_difference_from_sequential": float(np.abs(samples(store, cell["sample"])
                                                                             - reference).mean()),
                         "frechet_distance": cell["evaluate"]["metrics"]["model"]["frechet_distance"],
                         "sequential_frechet_distance": plain_fd})
            r = rows[-1]
            print(f"seed {seed} start {start}: wall {r['plain_wall_s']:.2f} s -> {r['chords_wall_s']:.2f} s "
                  f"({r['wall_speedup']:.2f}x; rounds {r['rounds']} = {r['speedup_in_rounds']:.2f}x), "
                  f"|x - x_seq| {r['mean_abs_difference_from_sequential']:.4f}, FD {r['frechet_distance']:.2f} "
                  f"vs {plain_fd:.2f}", flush=True)
    summary = {}
    for start in starts:
        group = [r for r in rows if r["core1_start"] == start]
        summary[str(start)] = {k: {"mean": statistics.fmean(r[k] for r in group),
                                   "std": statistics.stdev(r[k] for r in group) if len(group) > 1 else 0.0}
                               for k in ("wall_speedup", "speedup_in_rounds", "mean_abs_difference_from_sequential",
                                         "frechet_distance", "sequential_frechet_distance", "plain_wall_s",
                                         "chords_wall_s")}
    result = {"spec": "pipelines/digits.yaml", "overrides": overrides,
              "config": {**vars(args), "steps": steps, "starts": starts, "samples": n, "pretrain_steps": pretrain,
                         "root": str(root), "out": str(args.out)},
              "summary": summary, "runs": rows, "sweep_wall_s": done.wall_s,
              "benchmark_wall_s": time.perf_counter() - t0}
    write_result("chords_digits", result, args.out)


if __name__ == "__main__":
    main()

"""Warm rerun wall time ÷ cold wall time of `diffpipe run pipelines/digits.yaml`, as a user runs it.

Each run is a fresh `diffpipe run` process, with no Prefect server configured: the cold run starts
Prefect's temporary API; the warm rerun finds every stage cached and only reads the store (imports,
cache keys, checksum verification). A tiny first run on a throw-away artifact root migrates the Prefect
database; then a cold run on a new root and a warm rerun on the same root are timed. Do not edit
diffpipe while it runs: a code change invalidates the cache.
Usage: python benchmarks/pipeline_cache.py [--set PATH=VALUE ...] [--quick]  (--quick: tiny stages, a smoke
run written to a temporary folder)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from harness import REPO, open_benchmark, parser, run_diffpipe, set_options, write_result

TINY = ["stages.pretrain.steps=2", "stages.sample.num_samples=10", "stages.sample.scheduler.steps=2"]


def timed_run(spec: Path, root: Path, overrides: list[str], workdir: Path) -> float:
    """Wall seconds of one `diffpipe run` with the artifact root set to `root` (Prefect home in `workdir`)."""
    return run_diffpipe(["run", str(spec), *set_options([f"storage.root={root}", *overrides])], workdir).wall_s


def main() -> None:
    """Time warm-up, cold and warm runs and write benchmarks/results/pipeline_cache.json."""
    options = parser(__doc__)
    options.add_argument("--set", action="append", default=[], dest="overrides")
    args = open_benchmark(options.parse_args())
    overrides = [*(TINY if args.quick else []), *args.overrides]
    spec = REPO / "pipelines" / "digits.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        first = timed_run(spec, Path(tmp) / "warmup", overrides + TINY, work)  # migrates Prefect's database
        cold = timed_run(spec, Path(tmp) / "root", overrides, work)
        warm = timed_run(spec, Path(tmp) / "root", overrides, work)
    result = {"spec": "pipelines/digits.yaml", "overrides": overrides, "first_run_s": first, "cold_s": cold,
              "warm_s": warm, "warm_over_cold": warm / cold, "target": "<= 0.05"}
    write_result("pipeline_cache", result, args.out)


if __name__ == "__main__":
    main()

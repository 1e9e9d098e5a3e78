"""Warm rerun wall time ÷ cold wall time of `diffpipe run pipelines/digits.yaml`, as a user runs it.

Each run is a fresh `diffpipe run` process, with no Prefect server configured: the cold run starts
Prefect's temporary API; the warm rerun finds every stage cached and only reads the store (imports,
cache keys, checksum verification). A tiny first run on a throw-away artifact root migrates the Prefect
database; then a cold run on a new root and a warm rerun on the same root are timed. Do not edit
diffpipe while it runs: a code change invalidates the cache.
Usage: python benchmarks/pipeline_cache.py [--set PATH=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_run(spec: Path, root: Path, overrides: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one `diffpipe run` with the artifact root set to `root`."""
    args = [sys.executable, "-m", "diffpipe.flows.cli", "run", str(spec), "--set", f"storage.root={root}"]
    for o in overrides:
        args += ["--set", o]
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    return wall


def main() -> None:
    """Time warm-up, cold and warm runs and write benchmarks/results/pipeline_cache.json."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    spec = REPO / "pipelines" / "digits.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PREFECT_HOME": f"{tmp}/prefect", "HF_HUB_OFFLINE": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        tiny = ["stages.pretrain.steps=2", "stages.sample.num_samples=10", "stages.sample.scheduler.steps=2"]
        first = timed_run(spec, Path(tmp) / "warmup", args.overrides + tiny, env)  # migrates Prefect's database
        cold = timed_run(spec, Path(tmp) / "root", args.overrides, env)
        warm = timed_run(spec, Path(tmp) / "root", args.overrides, env)
    result = {"spec": "pipelines/digits.yaml", "overrides": args.overrides, "first_run_s": first, "cold_s": cold,
              "warm_s": warm, "warm_over_cold": warm / cold, "target": "<= 0.05"}
    print(json.dumps(result, indent=2))
    (REPO / "benchmarks" / "results" / "pipeline_cache.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

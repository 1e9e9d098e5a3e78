"""The shared benchmark harness: run `diffpipe` commands as a user would, time them, and write JSON results
that say where they were measured (commit, library versions, device, threads, load, date).

    from harness import environment, run_diffpipe, write_result
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LIBRARIES = ("torch", "diffusers", "prefect", "prefect-dask", "dask", "distributed", "numpy", "xarray", "zarr")


def environment() -> dict[str, Any]:
    """Commit, library versions, device, threads, CPU count, load average and date of this measurement."""
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    return {"commit": commit, "dirty": dirty, "libraries": {lib: _version(lib) for lib in LIBRARIES},
            "python": platform.python_version(), "platform": platform.platform(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor()})",
            "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(), "load_average_1m_5m_15m": os.getloadavg(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def _version(lib: str) -> str | None:
    try:
        return version(lib)
    except PackageNotFoundError:
        return None


def run_diffpipe(args: list[str], workdir: Path, env: dict[str, str] | None = None) -> tuple[Any, float]:
    """Run `diffpipe ARGS --json` in `workdir` (its own Prefect home); returns the parsed JSON and wall seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect-home"), "HF_HUB_OFFLINE": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    full_env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "diffpipe.flows.cli", *args, "--json"], cwd=workdir, env=full_env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"diffpipe {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), wall


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write `benchmarks/results/<name>.json` with the environment, print it, and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {**result, "environment": environment()}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps(doc, indent=1, default=str))
    print(f"wrote {path}")
    return path

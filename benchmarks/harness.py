"""The shared benchmark harness: one opening (options, threads, where results go), `diffpipe` runs and sweeps as
a user would start them, and JSON results that say where they were measured (commit, library versions, device,
threads, load, date).

    from harness import open_benchmark, run_diffpipe, run_sweep, stage_counts, write_result

    args = open_benchmark(parser(__doc__)).parse_args()  # --quick, --out, --threads for every benchmark

A `--quick` run is a smoke run at small sizes: its JSON goes to a temporary folder unless `--out` names one,
never over the published results in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "diffpipe-benchmarks-quick"
"""Where `--quick` results go by default (published results are full runs only)."""
LIBRARIES = ("torch", "diffusers", "prefect", "prefect-dask", "dask", "distributed", "numpy", "xarray", "zarr")


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: its docstring as help, `--quick`, `--out` and `--threads`."""
    first, _, rest = doc.partition("\n")
    p = argparse.ArgumentParser(description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes, to check the benchmark runs; results go to --out (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"folder of the JSON results (default benchmarks/results, with --quick {QUICK_RESULTS})")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of this process and its children")
    return p


def open_benchmark(args: argparse.Namespace) -> argparse.Namespace:
    """Apply the shared options: threads here and in child processes, and `args.out` resolved."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    args.out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    return args


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


@dataclass
class Finished:
    """A finished `diffpipe` command: its parsed `--json` output, wall seconds and CPU seconds of its processes."""

    doc: Any
    wall_s: float
    cpu_s: float


def run_diffpipe(args: list[str], workdir: Path, env: dict[str, str] | None = None) -> Finished:
    """Run `diffpipe ARGS --json` in `workdir` (its own Prefect home); exits naming the command when it fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect-home"), "HF_HUB_OFFLINE": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    full_env.pop("PREFECT_API_URL", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out, err = workdir / "stdout.json", workdir / "stderr.log"
    with out.open("w") as stdout, err.open("w") as stderr:  # files, not pipes: a crashed run's orphaned
        code = subprocess.run([sys.executable, "-m", "diffpipe.flows.cli", *args, "--json"], cwd=workdir,  # server
                              env=full_env, stdout=stdout, stderr=stderr).returncode  # would hold a pipe open
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        sys.exit(f"diffpipe {' '.join(args)} exited {code}:\n{err.read_text()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Finished(json.loads(out.read_text()), wall, cpu)


def set_options(overrides: list[str]) -> list[str]:
    """`--set` options of `diffpipe run` / `sweep` for `path=value` overrides."""
    return [a for o in overrides for a in ("--set", o)]


def grid_options(grid: dict[str, list[Any]], repeat_seeds: int = 1) -> list[str]:
    """`--grid PATH=[...]` (values as JSON, which is YAML) and `--repeat-seeds` options of `diffpipe sweep`."""
    out = [a for path, values in grid.items() for a in ("--grid", f"{path}={json.dumps(values)}")]
    return [*out, "--repeat-seeds", str(repeat_seeds)]


@dataclass
class SweepRun:
    """A finished sweep: the comparison it handed back, each cell's stages as `status` reads them from the
    store's index (metrics with their timings, artifacts, cache keys), wall and CPU seconds."""

    report: dict[str, Any]
    cells: dict[str, dict[str, dict[str, Any]]]
    """Cell name -> stage name -> the `diffpipe status --json` entry."""
    wall_s: float
    cpu_s: float


def run_sweep(spec: Path, grid: dict[str, list[Any]], repeat_seeds: int, overrides: list[str],
              workdir: Path) -> SweepRun:
    """`diffpipe sweep SPEC` over `grid` x `repeat_seeds` seeds, then `diffpipe status` of its cells."""
    options = [str(spec), *grid_options(grid, repeat_seeds), *set_options(overrides)]
    done = run_diffpipe(["sweep", *options], workdir)
    status = run_diffpipe(["status", *options], workdir).doc
    cells = {c["cell"]: {s["name"]: s for s in c["stages"]} for c in status["cells"]}
    return SweepRun(done.doc, cells, done.wall_s, done.cpu_s)


def stage_counts(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per stage of a sweep's comparison: how many cells executed it and how many found it cached (a stage the
    cells share executes once; its other cells count as cached)."""
    out: dict[str, dict[str, int]] = {}
    for cell in report["cells"]:
        for stage, state in cell["states"].items():
            counts = out.setdefault(stage, {})
            counts[state] = counts.get(state, 0) + 1
    return out


def write_result(name: str, result: dict[str, Any], out: Path = RESULTS) -> Path:
    """Write `<out>/<name>.json` with the environment, print it, and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    doc = {**result, "environment": environment()}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps(doc, indent=1, default=str))
    print(f"wrote {path}")
    return path

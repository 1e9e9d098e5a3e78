"""Peak memory of the offline climate builder at the full profile's grid vs the size of what it writes.

Builds the store of `pipelines/climate_full.yaml` (96 x 144, 3 members, every default scenario) with a
LocalCluster of Dask worker processes, sampling the resident memory of this process and all of its
children every 0.2 s. Memory stays bounded when the peak is set by one task (a scenario-member block)
per worker, not by the store: the report gives both, for stores of 3 and 9 members (the full profile's
and a store about three times larger), so the peak can be compared across sizes.
Writes benchmarks/results/climate_build_memory.json.

    python benchmarks/climate_build_memory.py [--nlat 96 --nlon 144 --members 3 9 --workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path

import psutil

from diffpipe.tasks.data.climate import ClimateBuildOptions, build_climate_store, open_climate_store

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "climate_build_memory.json"


class TreeMemory:
    """Samples the summed RSS of this process and its descendants in a background thread."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak_total, self.peak_single = every_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            sizes = []
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    sizes.append(p.memory_info().rss)
            self.peak_total = max(self.peak_total, sum(sizes))
            self.peak_single = max(self.peak_single, *sizes)
            time.sleep(self.every_s)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def disk_bytes(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(nlat: int, nlon: int, members: int, workers: int) -> dict:
    """Build one store in a temporary folder; its size, wall time and the peak memory of the process tree."""
    options = ClimateBuildOptions(nlat=nlat, nlon=nlon, members=members, dask_workers=workers)
    baseline = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with TreeMemory() as memory:
            path = build_climate_store(Path(tmp) / "climate.zarr", options)
        wall = time.perf_counter() - t0
        store = open_climate_store(path)
        uncompressed = (store["outputs"].nbytes + store["forcing_maps"].nbytes) / 1e6
        on_disk = disk_bytes(path) / 1e6
        records, block = store.sizes["record"], store["outputs"].nbytes / store.sizes["record"] / 1e6
    return {"grid": [nlat, nlon], "members": members, "dask_workers": workers, "scenarios": list(options.scenarios),
            "records": records, "megabytes_uncompressed": uncompressed, "megabytes_on_disk": on_disk,
            "megabytes_per_record": block, "wall_s": wall, "peak_rss_all_processes_mb": memory.peak_total / 1e6,
            "peak_rss_one_process_mb": memory.peak_single / 1e6, "parent_rss_before_mb": baseline / 1e6}


def main() -> None:
    """Build each store size, measuring memory, and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nlat", type=int, default=96)
    parser.add_argument("--nlon", type=int, default=144)
    parser.add_argument("--members", type=int, nargs="+", default=[3, 9])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    builds = [measure(args.nlat, args.nlon, members, args.workers) for members in args.members]
    first, last = builds[0], builds[-1]
    result = {"builds": builds, "store_growth": last["megabytes_uncompressed"] / first["megabytes_uncompressed"],
              "peak_rss_growth": last["peak_rss_all_processes_mb"] / first["peak_rss_all_processes_mb"]}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

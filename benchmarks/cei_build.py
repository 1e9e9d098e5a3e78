"""CEI data-build wall time with 2 Dask worker processes vs 1 (same options, same data).

Times `build_cei_dataset` given a running client (cluster start-up excluded, reported apart).
Writes benchmarks/results/cei_build.json.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import xarray as xr
from distributed import Client, LocalCluster

from diffpipe.tasks.data.cei.build import build_cei_dataset

OPTIONS = dict(geometries_per_molecule=24, events_per_chunk=256, charge_regime="xray", seed=0)


def timed_build(n_workers: int, store_path: str) -> dict:
    """Start a LocalCluster of n_workers single-threaded processes and time one build on it."""
    started = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        startup = time.perf_counter() - started
        client.run(lambda: __import__("diffpipe.tasks.data.cei"))
        report = build_cei_dataset(store_path=store_path, client=client, **OPTIONS)
    return {"n_workers": n_workers, "cluster_startup_s": startup, "build_s": report.wall_time_s,
            "n_events": report.n_events}


def main() -> None:
    """Build the same data set with 1 and 2 workers and write the wall-time ratio."""
    with tempfile.TemporaryDirectory() as folder:
        one = timed_build(1, f"{folder}/one.zarr")
        two = timed_build(2, f"{folder}/two.zarr")
        identical = xr.open_zarr(f"{folder}/one.zarr", consolidated=False).load().identical(
            xr.open_zarr(f"{folder}/two.zarr", consolidated=False).load())
    results = {"options": OPTIONS, "one_worker": one, "two_workers": two,
               "wall_time_ratio_2_over_1": two["build_s"] / one["build_s"],
               "speedup_2_workers": one["build_s"] / two["build_s"], "stores_identical": identical}
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results" / "cei_build.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

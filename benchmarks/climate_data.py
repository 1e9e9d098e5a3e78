"""Climate data throughput: builder/ingest MB/s with 2 Dask workers / 1; loader samples/s zarr / memory.

Run: `python benchmarks/climate_data.py [--nlat 32 --nlon 48 --members 2]`; writes
benchmarks/results/climate_data.json. MB are uncompressed float32 bytes written (outputs + maps).

`loader` is the raw random-batch read from zarr (`ClimateSamples`, one request per batch) vs in-memory
tensors. `stream` measures the two batch sources the climate domain trains with, at the full 96 x 144 grid
and the training batch (32): `ChunkStream` (whole-chunk reads into a shuffle buffer by 2 reader threads,
batches gathered 2 ahead by an assembler thread) with a memory budget of a third of the training split,
against `CachedBatches` (the split in memory, gathered by the calling thread): samples/s of each,
alternately three times, without and with data echoing (`echo` 3), and the process CPU seconds per batch
of each (the work, whichever thread does it); the peak RSS growth (VmHWM) of a fresh process streaming two
epochs (the store is 3x the budget); and the same stream from a moto S3 server on loopback (real s3fs).
`--stream-only` measures just `stream` and merges it into the JSON. One torch thread per op; the stream's
three background threads are its prefetch parallelism. A shared 2-core machine makes every rate noisy (the
load average is recorded).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import dask
import numpy as np
import torch
from distributed import Client, LocalCluster

from diffpipe.tasks.data.climate import (
    ClimateBuildOptions,
    ClimateSamples,
    build_climate_store,
    ingest_climatebench,
    open_climate_store,
    scenario_view,
)
from diffpipe.tasks.data.climate.batches import CachedBatches, static_channels, training_megabytes
from diffpipe.tasks.data.climate.stream import ChunkStream

RESULTS = Path(__file__).parent / "results" / "climate_data.json"


def store_megabytes(path: Path) -> float:
    """Uncompressed size of the outputs and forcing maps in MB."""
    ds = open_climate_store(path)
    return (ds["outputs"].nbytes + ds["forcing_maps"].nbytes) / 1e6


def time_build(options: ClimateBuildOptions, workers: int, dest: Path) -> float:
    """Seconds to build with a LocalCluster of `workers` processes (cluster start-up excluded)."""
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
    with cluster, Client(cluster):
        start = time.perf_counter()
        build_climate_store(dest, replace(options, dask_address=cluster.scheduler_address))
        return time.perf_counter() - start


def export_netcdf(store: Path, folder: Path) -> None:
    """Write every scenario of a store as ClimateBench inputs_/outputs_ netCDF4 files."""
    ds = open_climate_store(store)
    folder.mkdir(parents=True)
    for name in ds.attrs["scenarios"]:
        view = scenario_view(ds, name).compute()
        view[["CO2", "CH4", "SO2", "BC"]].to_netcdf(folder / f"inputs_{name}.nc", engine="h5netcdf")
        view[["tas", "diurnal_temperature_range", "pr", "pr90"]].to_netcdf(
            folder / f"outputs_{name}.nc", engine="h5netcdf"
        )


def time_ingest(folder: Path, dest: Path, workers: int) -> float:
    """Seconds to ingest with `workers` Dask threads."""
    with dask.config.set(num_workers=workers):
        start = time.perf_counter()
        ingest_climatebench(folder, dest, scheduler="threads")
        return time.perf_counter() - start


def loader_rates(store: Path, batch: int, batches: int) -> dict[str, float]:
    """Samples/s of random batches read from zarr vs the same batches indexed from in-memory tensors.

    torch uses one thread: on a shared 2-core machine its default pool makes a small gather ~50x slower.
    """
    torch.set_num_threads(1)
    samples = ClimateSamples(store, ["historical", "ssp126", "ssp370", "ssp585"])
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[: batch * batches]
    index_batches = [order[i : i + batch].tolist() for i in range(0, order.numel(), batch)]
    start = time.perf_counter()
    for idx in index_batches:
        samples[idx]
    zarr_rate = order.numel() / (time.perf_counter() - start)
    memory = samples[list(range(len(samples)))]
    start = time.perf_counter()
    for idx in index_batches:
        ix = torch.tensor(idx)
        {k: v[ix] for k, v in memory.items()}
    memory_rate = order.numel() / (time.perf_counter() - start)
    return {
        "zarr_samples_per_s": zarr_rate,
        "memory_samples_per_s": memory_rate,
        "zarr_over_memory": zarr_rate / memory_rate,
    }


TRAIN_SCENARIOS = ["historical", "ssp126", "ssp370", "ssp585"]
STREAM_SCENARIOS = ("historical", "ssp126", "ssp245", "ssp370")
STREAM_TRAIN = ["historical", "ssp126", "ssp370"]
READER_THREADS = 2


def environment() -> dict[str, object]:
    """Commit, library versions, device, threads and date of a measurement."""
    import platform

    import xarray
    import zarr

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return {"commit": commit.stdout.strip(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__, "zarr": zarr.__version__, "xarray": xarray.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "device": "cpu",
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}


def _rate(source, batch: int, batches: int) -> tuple[float, float]:
    """(samples/s, process CPU s per batch) of `batches` calls of `source.next` after one warm-up call."""
    gen = torch.Generator().manual_seed(0)
    source.next(gen, batch)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        source.next(gen, batch)
    return batch * batches / (time.perf_counter() - start), (time.process_time() - cpu) / batches


def stream_source(uri: str, budget_mb: float, batch: int, storage_options: dict | None = None,
                  echo: int = 1) -> ChunkStream:
    """The training loader the climate domain builds for a split larger than `budget_mb`."""
    samples = ClimateSamples(uri, STREAM_TRAIN, storage_options=storage_options)
    ds = open_climate_store(uri, storage_options=storage_options)
    static = static_channels(ds["lat"].values, ds["lon"].values)
    return ChunkStream(samples, static, torch.device("cpu"), seed=0, batch=batch, budget_mb=budget_mb, echo=echo,
                       workers=READER_THREADS)


def memory_source(store: Path) -> CachedBatches:
    """The in-memory cache the climate domain builds for a split within the budget."""
    samples = ClimateSamples(store, STREAM_TRAIN)
    ds = open_climate_store(store)
    return CachedBatches(samples, static_channels(ds["lat"].values, ds["lon"].values), torch.device("cpu"))


def stream_rates(uri: str, memory: CachedBatches, budget_mb: float, batch: int, batches: int,
                 storage_options: dict | None = None, echo: int = 1) -> dict[str, float]:
    """Samples/s of the zarr stream and of the in-memory cache, measured alternately three times."""
    repeats = []
    for _ in range(3):
        stream = stream_source(uri, budget_mb, batch, storage_options, echo)
        zarr_rate, zarr_cpu = _rate(stream, batch, batches)
        stream.close()
        memory_rate, memory_cpu = _rate(memory, batch, batches)
        repeats.append({"zarr_samples_per_s": zarr_rate, "memory_samples_per_s": memory_rate,
                        "zarr_over_memory": zarr_rate / memory_rate, "zarr_cpu_ms_per_batch": 1e3 * zarr_cpu,
                        "memory_cpu_ms_per_batch": 1e3 * memory_cpu})
    ratios = sorted(r["zarr_over_memory"] for r in repeats)
    return {"repeats": repeats, "median_zarr_over_memory": ratios[1], "window_reads": stream.shape.window,
            "read_records": stream.shape.read_records, "slot_mb": stream.shape.slot_bytes / 1e6,
            "maps_mb": stream.shape.maps_bytes / 1e6, "batches_ahead": stream.shape.batches_ahead,
            "reader_threads": READER_THREADS, "echo": echo}


def high_water_mb() -> float:
    """Peak resident memory of this process so far (VmHWM, MB; unlike ru_maxrss not inherited from a parent)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) * 1024 / 1e6


def rss_probe(store: str, budget_mb: float, batch: int, epochs: int) -> dict[str, float]:
    """Peak RSS growth (MB) of streaming `epochs` epochs in this process (run in a fresh subprocess)."""
    ClimateSamples(store, STREAM_TRAIN).arrays()  # imports and zarr's I/O thread, before the baseline
    before = high_water_mb()
    stream = stream_source(store, budget_mb, batch)
    records = int(stream.training.sum())
    gen = torch.Generator()
    for _ in range(epochs * records // batch):
        stream.next(gen, batch)
    stream.close()
    after = high_water_mb()
    return {"rss_before_mb": before, "rss_peak_mb": after, "rss_growth_mb": after - before,
            "records_streamed": epochs * records}


def s3_copy(store: Path) -> tuple[object, str, dict]:
    """A moto S3 server on 127.0.0.1 holding a copy of `store`: (server, URI, storage options)."""
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir("climate")
    fs.put(str(store), "climate/store.zarr", recursive=True)
    return server, "s3://climate/store.zarr", options


def stream_benchmark(nlat: int, nlon: int, members: int, batch: int, batches: int, s3: bool) -> dict[str, object]:
    """The streaming loader vs the in-memory cache at the full grid, peak RSS on a store 3x the budget, S3."""
    torch.set_num_threads(1)
    options = ClimateBuildOptions(nlat=nlat, nlon=nlon, members=members, scenarios=STREAM_SCENARIOS, dask_workers=0)
    work = Path(tempfile.mkdtemp(prefix="climate_stream_"))
    try:
        store = build_climate_store(work / "store.zarr", options)
        samples = ClimateSamples(store, STREAM_TRAIN)
        split_mb = training_megabytes(samples, nlat * nlon)
        budget = split_mb / 3
        memory = memory_source(store)
        result: dict[str, object] = {"grid": [nlat, nlon], "members": members, "batch": batch, "batches": batches,
                                     "training_split_mb": split_mb, "memory_budget_mb": budget,
                                     "local": stream_rates(str(store), memory, budget, batch, batches),
                                     "local_echo_3": stream_rates(str(store), memory, budget, batch, batches, echo=3)}
        del memory
        probe = subprocess.run([sys.executable, __file__, "--rss-probe", str(store), "--budget", str(budget),
                                "--batch", str(batch)], capture_output=True, text=True, check=True)
        result["rss"] = json.loads(probe.stdout) | {"memory_budget_mb": budget, "training_split_mb": split_mb}
        if s3:
            server, uri, storage = s3_copy(store)
            try:
                memory = memory_source(store)
                result["s3_moto_loopback"] = stream_rates(uri, memory, budget, batch, max(4, batches // 4), storage)
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    """Run all measurements and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nlat", type=int, default=32)
    parser.add_argument("--nlon", type=int, default=48)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--stream-only", action="store_true", help="measure only the streaming loader")
    parser.add_argument("--stream-grid", type=int, nargs=2, default=(96, 144))
    parser.add_argument("--stream-members", type=int, default=3)
    parser.add_argument("--stream-batches", type=int, default=200)
    parser.add_argument("--no-s3", action="store_true", help="skip the loopback S3 (moto) measurement")
    parser.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe is not None:
        torch.set_num_threads(1)
        print(json.dumps(rss_probe(args.rss_probe, args.budget, args.batch, epochs=2)))
        return
    stream = stream_benchmark(*args.stream_grid, args.stream_members, args.batch, args.stream_batches,
                              not args.no_s3)
    if args.stream_only:
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        previous.pop("training_loader", None)
        result = previous | {"stream": stream, "stream_environment": environment()}
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(stream, indent=2))
        return
    options = ClimateBuildOptions(nlat=args.nlat, nlon=args.nlon, members=args.members)
    work = Path(tempfile.mkdtemp(prefix="climate_bench_"))
    try:
        build = {w: time_build(options, w, work / f"built{w}.zarr") for w in (1, 2)}
        megabytes = store_megabytes(work / "built1.zarr")
        np.testing.assert_array_equal(
            open_climate_store(work / "built1.zarr")["outputs"][:50].values,
            open_climate_store(work / "built2.zarr")["outputs"][:50].values,
        )
        export_netcdf(work / "built1.zarr", work / "netcdf")
        ingest = {w: time_ingest(work / "netcdf", work / f"ingested{w}.zarr", w) for w in (1, 2)}
        result = {
            "grid": [args.nlat, args.nlon],
            "members": args.members,
            "scenarios": list(options.scenarios),
            "megabytes": megabytes,
            "builder_mb_per_s": {str(w): megabytes / s for w, s in build.items()},
            "builder_2_over_1": build[1] / build[2],
            "ingest_mb_per_s": {str(w): megabytes / s for w, s in ingest.items()},
            "ingest_2_over_1": ingest[1] / ingest[2],
            "loader": loader_rates(work / "built1.zarr", args.batch, args.batches) | {"batch": args.batch},
            "stream": stream,
            "environment": environment(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Climate data throughput: builder/ingest MB/s with 2 Dask workers / 1; loader samples/s zarr / memory.

Run: `python benchmarks/climate_data.py [--nlat 32 --nlon 48 --members 2]`; writes
benchmarks/results/climate_data.json. MB are uncompressed float32 bytes written (outputs + maps).

`loader` is the raw random-batch read from zarr vs in-memory tensors. `training_loader` measures the batch
sources the climate domain trains with against the same in-memory baseline: `CachedBatches` (the training
split read once into memory; its one-time read is reported separately), `StreamingBatches` alone (zarr
reads in a background thread), and a training loop (a small UNet step) fed by the streamer vs by the
cache, where prefetching hides the reads behind the compute.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from diffpipe.tasks.data.climate.batches import CachedBatches, StreamingBatches, condition_channels, static_channels

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


def _rate(source, batch: int, batches: int, step=None) -> float:
    """Samples/s of `batches` calls of `source.next` (each followed by `step(x, forcing)` when given)."""
    gen = torch.Generator().manual_seed(0)
    source.next(gen, batch)  # warm-up: first prefetch, allocations
    start = time.perf_counter()
    for _ in range(batches):
        x, forcing = source.next(gen, batch)
        if step is not None:
            step(x, forcing)
    return batch * batches / (time.perf_counter() - start)


def _unet_step(nlat: int, nlon: int):
    """One optimiser step of a small UNet (the quick profile's backbone) on a batch."""
    from diffusers import UNet2DModel

    from diffpipe.tasks.data.climate.domain import call_climate_unet

    torch.manual_seed(0)
    model = UNet2DModel(sample_size=(nlat, nlon), in_channels=4 + condition_channels(1), out_channels=4,
                        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                        class_embed_type="timestep")
    opt = torch.optim.AdamW(model.parameters())

    def step(x: torch.Tensor, forcing) -> None:
        loss = call_climate_unet(model, x, torch.full((x.shape[0],), 500.0), forcing).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def training_loader_rates(store: Path, batch: int, batches: int) -> dict[str, float]:
    """The climate domain's batch sources against in-memory tensors (see the module docstring)."""
    torch.set_num_threads(1)
    ds = open_climate_store(store)
    static = static_channels(ds["lat"].values, ds["lon"].values)
    samples = ClimateSamples(store, TRAIN_SCENARIOS)
    memory = samples[list(range(len(samples)))]
    gen = torch.Generator().manual_seed(0)
    many = 50 * batches  # in-memory batches take microseconds: time many of them
    start = time.perf_counter()
    for _ in range(many):
        ix = torch.randint(0, len(samples), (batch,), generator=gen)
        {k: v[ix] for k, v in memory.items()}
    memory_rate = batch * many / (time.perf_counter() - start)
    start = time.perf_counter()
    cached = CachedBatches(samples, static, torch.device("cpu"))
    fill_s = time.perf_counter() - start
    cached_rate = _rate(cached, batch, many)
    streaming_rate = _rate(StreamingBatches(samples, static, torch.device("cpu"), 0, prefetch=4), batch, batches)
    step = _unet_step(ds.sizes["lat"], ds.sizes["lon"])
    loop_cached = _rate(cached, batch, batches // 4, step)
    loop_streaming = _rate(StreamingBatches(samples, static, torch.device("cpu"), 0, prefetch=4), batch,
                           batches // 4, step)
    return {
        "memory_samples_per_s": memory_rate,
        "cached_samples_per_s": cached_rate,
        "cached_over_memory": cached_rate / memory_rate,
        "cache_fill_s": fill_s,
        "streaming_samples_per_s": streaming_rate,
        "streaming_over_memory": streaming_rate / memory_rate,
        "train_loop_samples_per_s_cached": loop_cached,
        "train_loop_samples_per_s_streaming": loop_streaming,
        "train_loop_streaming_over_cached": loop_streaming / loop_cached,
        "batch": batch,
    }


def main() -> None:
    """Run all measurements and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nlat", type=int, default=32)
    parser.add_argument("--nlon", type=int, default=48)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--loader-only", type=Path, default=None, help="measure only the training loader on this store")
    args = parser.parse_args()
    if args.loader_only is not None:
        print(json.dumps(training_loader_rates(args.loader_only, args.batch, args.batches), indent=2))
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
            "training_loader": training_loader_rates(work / "built1.zarr", args.batch, args.batches),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

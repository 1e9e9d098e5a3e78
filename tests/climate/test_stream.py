"""The streaming reader: exact batches against direct reads, resumption, coverage, bounded buffers, bad input,
and the same code path on an S3 server (moto on loopback, real s3fs)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port

from diffpipe.errors import DataError
from diffpipe.tasks.data.climate import ClimateBuildOptions, ClimateSamples, build_climate_store
from diffpipe.tasks.data.climate.batches import static_channels
from diffpipe.tasks.data.climate.stream import ChunkStream, pinned

OPTIONS = ClimateBuildOptions(nlat=6, nlon=8, members=2, scenarios=("historical", "ssp126", "ssp245"),
                              stats_scenarios=("historical", "ssp126"), dask_workers=0, chunk_records=8)
TRAIN = ["historical", "ssp126"]
STATIC = static_channels(np.linspace(-90, 90, 6), np.arange(8) * 45.0)
CPU = torch.device("cpu")
GEN = torch.Generator()  # not used by the stream: its batches are a function of seed and step


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small store with 8-record chunks (the test scenario's records share chunks with training ones)."""
    return build_climate_store(tmp_path_factory.mktemp("stream") / "store.zarr", OPTIONS)


def stream(path: Path | str, **kwargs: object) -> ChunkStream:
    """A stream over the training scenarios with a buffer of a few reads."""
    options = {"budget_mb": 0.2, "prefetch": 2, "workers": 2} | kwargs
    storage = options.pop("storage_options", None)
    return ChunkStream(ClimateSamples(path, TRAIN, history=2, storage_options=storage), STATIC, CPU, seed=3,
                       batch=6, **options)


def test_batches_equal_direct_reads_of_their_records(store: Path) -> None:
    s = stream(store)
    assert 1 <= s.shape.window < len(s.reads), "the buffer must be smaller than the split"
    samples = ClimateSamples(store, TRAIN, history=2)
    position = {int(r): i for i, r in enumerate(samples.records)}
    for _ in range(6):
        batch = s.take(GEN, 6)
        direct = samples[[position[int(r)] for r in batch.ids]]
        torch.testing.assert_close(batch.target, direct["target"], rtol=0, atol=0)
        torch.testing.assert_close(batch.forcing.maps, direct["maps"], rtol=0, atol=0)
        torch.testing.assert_close(batch.forcing.scalars, direct["scalars"], rtol=0, atol=0)
        torch.testing.assert_close(batch.forcing.year, direct["year"])
    s.close()


def test_resumed_stream_repeats_the_uninterrupted_batches(store: Path) -> None:
    whole = stream(store)
    batches = [whole.next(torch.Generator(), 6) for _ in range(9)]
    resumed = stream(store, start_step=7)
    for step in (7, 8):
        target, forcing = resumed.next(torch.Generator(), 6)
        torch.testing.assert_close(target, batches[step][0], rtol=0, atol=0)
        torch.testing.assert_close(forcing.channels(), batches[step][1].channels(), rtol=0, atol=0)
    fresh = stream(store, start_step=9)
    small = fresh.take(GEN, 4)
    switched = resumed.take(GEN, 4)  # step 9 in another size: the batches ahead are dropped, the window read anew
    assert switched.ids.tolist() == small.ids.tolist() and len(small.ids) == 4
    torch.testing.assert_close(switched.target, small.target, rtol=0, atol=0)
    fresh.close()
    whole.close()
    resumed.close()


def test_an_epoch_covers_the_training_records_and_nothing_else(store: Path) -> None:
    s = stream(store)
    samples = ClimateSamples(store, TRAIN)
    per_epoch = len(samples) // 6
    seen = np.concatenate([s.records(k, 6)[1] for k in range(3 * per_epoch)])
    assert set(seen) <= set(samples.records.tolist())
    assert len(set(seen)) / len(samples) > 0.9  # drawn with replacement: about 1 - e^-3 after three epochs
    held = s.target.numel() * 4 + s.maps.numel() * 4 + (s.shape.batches_ahead + 1) * s.shape.batch_bytes
    assert held == s.shape.total_bytes <= 0.2e6  # the buffer, maps and batches keep to the memory budget
    years = np.unique(samples.record_step[samples.records])
    assert s.maps.shape[0] == years.size  # the maps of the training years only, once each
    s.close()


def test_echo_keeps_each_read_in_the_buffer_longer(store: Path) -> None:
    plain, echoed = stream(store), stream(store, echo=3)
    assert [echoed.window_start(k) for k in range(0, 12, 4)] == [plain.window_start(k) // 3 for k in range(0, 12, 4)]
    reads = {echoed.window_start(k) for k in range(30)}
    assert len(reads) == plain.window_start(29) // 3 + 1  # a third of the reads for the same batches
    plain.close()
    echoed.close()


def test_batches_are_pinned_only_for_a_gpu() -> None:
    assert pinned(torch.device("cuda")) and pinned(torch.device("cuda", 1))
    assert not pinned(CPU) and not pinned(torch.device("meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the pinned copy path needs one")
def test_batches_for_a_gpu_come_through_pinned_memory(store: Path) -> None:
    s = ChunkStream(ClimateSamples(store, TRAIN), STATIC, torch.device("cuda"), seed=3, batch=6, budget_mb=0.2,
                    prefetch=2)
    host = s.take(GEN, 6)
    assert host.target.is_pinned() and host.forcing.maps.is_pinned()
    target, forcing = s.next(torch.Generator(), 6)
    assert target.is_cuda and forcing.maps.is_cuda and forcing.static.is_cuda
    s.close()


def test_budget_below_one_read_is_bad_input(store: Path) -> None:
    with pytest.raises(DataError) as err:
        stream(store, budget_mb=0.001)
    assert err.value.where == "data.memory_budget_mb" and "too small" in err.value.problem
    assert err.value.exit_code == 2


def test_misaligned_read_request_is_bad_input(store: Path) -> None:
    with pytest.raises(DataError) as err:
        stream(store, read_records=12)
    assert err.value.where == "data.stream.read_records" and "multiple of 8" in err.value.expected
    assert stream(store, read_records=16, budget_mb=0.2).shape.read_records == 16


def test_store_chunked_inside_a_sample_is_bad_input(store: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        stream(copy_store(store, tmp_path / "odd.zarr", chunks=(8, 4, 3, 8)))
    assert err.value.where.endswith("odd.zarr/outputs") and "whole samples" in err.value.problem


def copy_store(store: Path, dest: Path, chunks: tuple[int, ...] | None = None, compressed: bool = False) -> Path:
    """A copy of `store` with other `outputs` chunks or compressed arrays (zarr's default zstd)."""
    import zarr

    source = zarr.open_group(store, mode="r")
    target = zarr.create_group(dest, attributes=dict(source.attrs))
    for name, array in source.arrays():
        copy = target.create_array(name, shape=array.shape, dtype=array.dtype,
                                   chunks=chunks if chunks and name == "outputs" else array.chunks,
                                   compressors="auto" if compressed else None,
                                   dimension_names=array.metadata.dimension_names, attributes=dict(array.attrs))
        copy[...] = array[...]
    return dest


def test_compressed_store_is_bad_input(store: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        stream(copy_store(store, tmp_path / "zstd.zarr", compressed=True))
    assert err.value.where.endswith("zstd.zarr/outputs") and "raw little-endian" in err.value.problem
    assert "ZstdCodec" in err.value.found and err.value.exit_code == 2


def test_missing_chunk_is_bad_input(store: Path, tmp_path: Path) -> None:
    import shutil

    broken = shutil.copytree(store, tmp_path / "broken.zarr")
    s = stream(broken)
    (broken / "outputs" / "c" / str(s.read_at(0) // 8) / "0" / "0" / "0").unlink()
    with pytest.raises(DataError) as err:
        s.take(GEN, 6)
    assert "missing or short chunk" in err.value.problem and err.value.where.endswith(f"c/{s.read_at(0) // 8}/0/0/0")
    s.close()


@pytest.fixture
def s3_store(store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict]]:
    """The store uploaded to a moto S3 server on 127.0.0.1; its URI and storage options."""
    import s3fs
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir("climate")
    fs.put(str(store), "climate/store.zarr", recursive=True)
    yield "s3://climate/store.zarr", options
    server.stop()


def test_the_same_stream_from_s3(store: Path, s3_store: tuple[str, dict]) -> None:
    uri, options = s3_store
    local, remote = stream(store), stream(uri, storage_options=options)
    for _ in range(3):
        a, fa = local.next(torch.Generator(), 6)
        b, fb = remote.next(torch.Generator(), 6)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(fa.channels(), fb.channels(), rtol=0, atol=0)
    local.close()
    remote.close()


def test_builder_rejects_zero_chunk_records(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="chunk_records"):
        build_climate_store(tmp_path / "x.zarr", replace(OPTIONS, chunk_records=0))

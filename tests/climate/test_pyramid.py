"""Spatiotemporal Pyramid Flow: level blocks by hand, the coarse-to-fine sampling bookkeeping, bad pyramids,
and one tiny SPF pipeline through the real flow (train, sample every level, evaluate)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from tiny_specs import run_spec

from diffpipe.errors import SpecError
from diffpipe.flows.checks import check_spec
from diffpipe.flows.plan import status
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.schemas.climate import PyramidLevel, check_pyramid
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.data.climate import ClimateBuildOptions, ClimateSamples, build_climate_store, pyramid
from diffpipe.tasks.data.climate.batches import CachedBatches, read_split, static_channels
from diffpipe.tasks.data.climate.domain import ClimateDomain
from diffpipe.tasks.data.climate.stream import ChunkStream

LEVELS = (PyramidLevel(space_factor=2, period_years=10), PyramidLevel(space_factor=1, period_years=1))


MONTHLY = (PyramidLevel(space_factor=2, period_years=10), PyramidLevel(space_factor=1, period_years=1),
           PyramidLevel(space_factor=1, period_months=1))


def split(years: np.ndarray, members: int = 2, months: int = 1) -> dict[str, torch.Tensor]:
    """A split of records (member-major; months within each year when `months` is 12) on a 4 x 6 grid with known
    values."""
    n = len(years) * members * months
    rng = np.random.default_rng(0)
    return {
        "target": torch.from_numpy(rng.normal(size=(n, 4, 4, 6)).astype(np.float32)),
        "maps": torch.from_numpy(rng.normal(size=(n, 2, 4, 6)).astype(np.float32)),
        "scalars": torch.from_numpy(rng.normal(size=(n, 2)).astype(np.float32)),
        "year": torch.from_numpy(np.tile(np.repeat(years, months), members)),
        "member": torch.from_numpy(np.repeat(np.arange(members), len(years) * months)),
        "scenario": torch.zeros(n, dtype=torch.int64),
        "month": torch.from_numpy(np.tile(np.arange(1, 13), n // 12) if months == 12 else np.zeros(n, np.int64)),
    }


def blocks_of(data: dict[str, torch.Tensor], parts: int = 1, levels: tuple = LEVELS) -> list[pyramid.LevelBlocks]:
    """The level blocks of an in-memory split, accumulated over `parts` consecutive parts."""
    cuts = np.array_split(np.arange(len(data["year"])), parts)
    return pyramid.level_blocks(levels, [{k: v[c] for k, v in data.items()} for c in cuts], pyramid.split_keys(data),
                                torch.zeros(3, 4, 6))


def test_level_blocks_are_block_means_pooled() -> None:
    data = split(np.arange(2015, 2031))  # decades 2010s (5 years), 2020s (10), 2030 (1)
    blocks = blocks_of(data)
    decadal, yearly = blocks
    assert decadal.target.shape == (6, 4, 2, 3) and yearly.target.shape == (32, 4, 4, 6)
    member1_2020s = (data["member"] == 1) & (data["year"] // 10 == 202)
    by_hand = torch.nn.functional.avg_pool2d(data["target"][member1_2020s].double().mean(0), 2).float()
    block = decadal.block_of_record[member1_2020s.numpy()][0]
    torch.testing.assert_close(decadal.target[block], by_hand)
    assert float(decadal.year[block]) == pytest.approx(2024.5)
    torch.testing.assert_close(yearly.target, data["target"])
    parent = pyramid.parents(blocks)[1]
    assert (parent[yearly.block_of_record] == decadal.block_of_record).all()
    for whole, parted in zip(blocks, blocks_of(data, parts=3), strict=True):  # one pass of reads, part by part
        torch.testing.assert_close(parted.target, whole.target)
        torch.testing.assert_close(parted.maps, whole.maps)
        assert (parted.block_of_record == whole.block_of_record).all()


def test_monthly_levels_average_back_to_the_coarser_levels() -> None:
    data = split(np.arange(2015, 2031), months=12)
    decadal, yearly, monthly = blocks_of(data, parts=5, levels=MONTHLY)
    assert monthly.target.shape == (2 * 16 * 12, 4, 4, 6) and yearly.target.shape == (32, 4, 4, 6)
    torch.testing.assert_close(monthly.target, data["target"])
    parents = pyramid.parents([decadal, yearly, monthly])
    year_sum = torch.zeros(32, 4, 4, 6, dtype=torch.float64).index_add_(0, torch.from_numpy(parents[2]),
                                                                         monthly.target.double())
    torch.testing.assert_close(yearly.target, (year_sum / 12).float())  # a year is the mean of its 12 months
    weights = torch.from_numpy(np.bincount(parents[1], minlength=6)).double()
    decade_sum = torch.zeros(6, 4, 4, 6, dtype=torch.float64).index_add_(0, torch.from_numpy(parents[1]),
                                                                         yearly.target.double())
    torch.testing.assert_close(decadal.target, pyramid.pool(decade_sum / weights[:, None, None, None], 2).float())
    torch.testing.assert_close(yearly.year, torch.from_numpy(np.tile(np.arange(2015, 2031), 2)).double())
    assert yearly.season.abs().max() < 1e-12 and decadal.season.abs().max() < 1e-12  # whole years: no season
    january, july = monthly.season[0], monthly.season[6]
    torch.testing.assert_close(january, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(july, torch.tensor([-1.0, 0.0]), atol=1e-6, rtol=0)
    assert float(monthly.year[6]) == pytest.approx(2015 + 0.5 / 12)


def test_sampling_conditions_each_member_on_its_own_coarser_sample() -> None:
    years = np.arange(2015, 2031)
    blocks = pyramid.Pyramid(blocks_of(split(years, members=1)), len(LEVELS))
    seen = []

    def draw(shape: tuple[int, ...], cond: pyramid.PyramidForcing) -> torch.Tensor:
        assert cond.channels().shape == (shape[0], pyramid.condition_channels(2), *shape[2:])
        seen.append(cond)
        return torch.arange(shape[0], dtype=torch.float32)[:, None, None, None].expand(shape) + 100 * len(seen)

    fields = pyramid.sample_levels(draw, blocks, members=3, batch_size=1000)
    assert [f.shape for f in fields] == [(3, 3, 4, 2, 3), (16, 3, 4, 4, 6)]
    coarse = seen[1].coarse.reshape(16, 3, 4, 4, 6)  # rows are (year, member)
    decade = blocks.parents[1]
    for year in (0, 4, 5, 15):
        for member in range(3):
            expected = fields[0][decade[year], member].repeat_interleave(2, -2).repeat_interleave(2, -1)
            torch.testing.assert_close(coarse[year, member], expected)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A builder store on a 4 x 6 grid, 2 members, 8-record chunks."""
    options = ClimateBuildOptions(nlat=4, nlon=6, members=2, scenarios=("historical", "ssp126", "ssp245"),
                                  stats_scenarios=("historical", "ssp126"), dask_workers=0, chunk_records=8)
    return build_climate_store(tmp_path_factory.mktemp("pyramid") / "store.zarr", options)


@pytest.mark.parametrize("streamed", [False, True])
def test_training_batches_condition_on_the_true_coarser_field(small_store: Path, streamed: bool) -> None:
    samples = ClimateSamples(small_store, ["historical", "ssp126"])
    static = static_channels(np.linspace(-90, 90, 4), np.arange(6) * 60.0)
    whole = read_split(samples)
    decadal, _ = pyramid.level_blocks(LEVELS, [whole], pyramid.split_keys(whole), static)
    coarse = pyramid.level_blocks(LEVELS[:1], pyramid.samples_parts(samples, 50), pyramid.samples_keys(samples), static)
    torch.testing.assert_close(coarse[0].target, decadal.target)  # accumulated over parts of 50 reads
    cpu, gen = torch.device("cpu"), torch.Generator().manual_seed(0)

    def source(start: int = 0) -> CachedBatches | ChunkStream:
        if not streamed:
            return CachedBatches(samples, static, cpu)
        return ChunkStream(samples, static, cpu, seed=1, batch=5, budget_mb=0.08, prefetch=2, start_step=start)

    finest, reference = source(), source()  # the reference repeats the finest level's draws
    if streamed:
        assert finest.shape.window < len(finest.reads)  # the split does not fit the buffer
    batches = pyramid.PyramidBatches(pyramid.Pyramid(coarse, 2), finest, samples.records, static, cpu)
    position = {int(r): i for i, r in enumerate(samples.records)}
    for step in range(6):
        twin = torch.Generator().set_state(gen.get_state())
        x0, cond = batches.next(gen, 5)
        assert cond.level == step % 2  # levels in turn
        if cond.level == 0:
            assert x0.shape == (5, 4, 2, 3) and cond.coarse.abs().sum() == 0
            continue
        rows = [position[int(r)] for r in reference.take(twin, 5).ids]
        torch.testing.assert_close(x0, whole["target"][rows], rtol=0, atol=0)
        torch.testing.assert_close(cond.maps, whole["maps"][rows], rtol=0, atol=0)
        torch.testing.assert_close(cond.coarse, pyramid.upsample(decadal.target[decadal.block_of_record[rows]], 2))
    if streamed:  # resumed at step 5: the stream resumes at its own step 5 // 2 (steps 1 and 3 were yearly)
        again = source(start=5 // 2)
        resumed = pyramid.PyramidBatches(pyramid.Pyramid(coarse, 2), again, samples.records, static, cpu, 5)
        torch.testing.assert_close(resumed.next(torch.Generator(), 5)[0], x0, rtol=0, atol=0)
        for s in (finest, reference, again):
            s.close()


@pytest.mark.parametrize(("levels", "grid", "where"), [
    (((2, 10), (1, 4), (1, 1)), None, "model.levels[1].period_years"),
    (((3, 10), (2, 1), (1, 1)), None, "model.levels[1].space_factor"),
    (((4, 10), (1, 1)), (6, 8), "model.levels[0].space_factor"),
    (((4, 10), (2, 1)), None, "model.levels[1]"),
    (((4, 10), (1, 1)), "monthly", "model.levels[1]"),  # a monthly store: the finest level must be monthly
    (((4, 10), (1, 1), (1, "5m"), (1, "1m")), "monthly", "model.levels[2].period_months"),
    (((4, "6m"), (1, 1), (1, "1m")), "monthly", "model.levels[1].period_years"),
])
def test_bad_pyramids_name_the_field(levels: tuple, grid: tuple[int, int] | str | None, where: str) -> None:
    def level(f: int, p: int | str) -> PyramidLevel:
        if isinstance(p, str):
            return PyramidLevel(space_factor=f, period_months=int(p[:-1]))
        return PyramidLevel(space_factor=f, period_years=p)

    spec = tuple(level(*lv) for lv in levels)
    with pytest.raises(SpecError) as err:
        if grid == "monthly":
            check_pyramid(spec, None, 12)
        else:
            check_pyramid(spec, grid)
    assert err.value.where == where and err.value.exit_code == 2


def spf_spec(root: Path) -> dict:
    """A tiny SPF pipeline on an 8 x 12 builder grid: decadal at 4 x 6, yearly at 8 x 12. The memory budget
    (0.6 MB) is below the training split (1.2 MB), so the yearly level streams from zarr."""
    train = {"steps": 10, "batch_size": 8, "checkpoint_every": 5, "log_every": 5, "cond_dropout": 0.0, "lr": 2e-3}
    return {
        "name": "climate-spf-test",
        "data": {"kind": "climate", "source": {"kind": "builder", "nlat": 8, "nlon": 12, "members": 2,
                                               "scenarios": ["historical", "ssp126", "ssp245"]},
                 "train_scenarios": ["historical", "ssp126"], "memory_budget_mb": 0.6},
        "model": {"arch": "spf", "levels": [{"space_factor": 2, "period_years": 10},
                                            {"space_factor": 1, "period_years": 1}],
                  "block_out_channels": [8, 16], "norm_num_groups": 4, "attention": False},
        "stages": [
            {"name": "spf", "stage": "pretrain", "objective": {"kind": "flow_matching"}, **train},
            {"name": "ens", "stage": "sample", "model": "spf", "num_samples": 2,
             "scheduler": {"name": "FlowMatchEulerDiscreteScheduler", "steps": 2}},
            {"name": "eval", "stage": "evaluate", "samples": "ens", "metrics": ["domain"]},
        ],
        "runtime": {"device": "cpu", "seed": 0, "dask_workers": 1},
        "storage": {"root": str(root)},
    }


def test_spf_pipeline_samples_every_level(tmp_path: Path, prefect_api) -> None:

    raw = spf_spec(tmp_path / "artifacts")
    spec = validate_spec(copy.deepcopy(raw))
    check_spec(spec)
    nodes = run_spec(spec)
    assert all(e["state"] == "executed" for e in nodes.values())
    metrics = nodes["ens"]["metrics"]
    assert metrics["blocks_per_level"] == [10, 86] and metrics["sampling_s_per_simulated_year"] > 0
    store = ArtifactStore(raw["storage"]["root"])
    refs = {r.name: r.ref for r in status(spec, store)}
    folder = store.local_path(refs["ens"])
    yearly = xr.open_zarr(folder / "samples.zarr", consolidated=False)
    decadal = xr.open_zarr(folder / "level_0.zarr", consolidated=False)
    assert yearly["tas"].shape == (86, 2, 8, 12) and decadal["tas"].shape == (10, 2, 4, 6)
    assert decadal["period"].values[0] == pytest.approx(2017.0)  # 2015-2019 of the 2010s block
    assert np.isfinite(nodes["eval"]["metrics"]["model"]["tas"]["crps"])
    ctx = StageContext(spec, "spf", "0" * 64, {"data": refs["data"]}, store, tmp_path)
    batches = ClimateDomain().batches(ctx, torch.device("cpu"))
    assert isinstance(batches.finest, ChunkStream)  # the yearly level streamed: the split exceeds the budget
    batches.finest.close()

    bad = copy.deepcopy(raw)
    bad["model"]["levels"][0]["space_factor"] = 3
    with pytest.raises(SpecError, match=r"model.levels\[0\].space_factor"):
        check_spec(validate_spec(bad))


def test_monthly_spf_pipeline_samples_months_and_scores_them(tmp_path: Path, prefect_api) -> None:
    """A monthly builder store (2 members, 8 x 12) under a decadal -> yearly -> monthly pyramid, its monthly level
    streamed (the budget is below the split): months sampled and scored, their yearly means scored as years."""

    raw = spf_spec(tmp_path / "artifacts")
    raw["data"]["source"]["months_per_year"] = 12
    raw["data"]["memory_budget_mb"] = 4.0
    raw["model"]["levels"] = [{"space_factor": 2, "period_years": 10}, {"space_factor": 1, "period_years": 1},
                              {"space_factor": 1, "period_months": 1}]
    spec = validate_spec(copy.deepcopy(raw))
    check_spec(spec)
    nodes = run_spec(spec)
    assert all(e["state"] == "executed" for e in nodes.values())
    assert nodes["ens"]["metrics"]["blocks_per_level"] == [10, 86, 86 * 12]
    store = ArtifactStore(raw["storage"]["root"])
    refs = {r.name: r.ref for r in status(spec, store)}
    folder = store.local_path(refs["ens"])
    yearly = xr.open_zarr(folder / "samples.zarr", consolidated=False)
    monthly = xr.open_zarr(folder / "monthly.zarr", consolidated=False)
    assert monthly["tas"].dims == ("time", "month", "member", "lat", "lon")
    assert monthly["tas"].shape == (86, 12, 2, 8, 12) and yearly["tas"].shape == (86, 2, 8, 12)
    np.testing.assert_allclose(monthly["pr"].mean("month").values, yearly["pr"].values, rtol=1e-5, atol=1e-6)
    scores = nodes["eval"]["metrics"]
    month_scores = scores["monthly"]["model"]["tas"]
    assert np.isfinite(month_scores["crps"]) and month_scores["crps_skill_term"] >= month_scores["crps"] > 0
    assert scores["monthly"]["internal_variability_floor"]["tas"] == {}  # 2 target members: no leave-one-out spread
    assert np.isfinite(scores["model"]["tas"]["crps"]) and np.isfinite(scores["pattern_scaling"]["tas"]["crps"])
    ctx = StageContext(spec, "spf", "0" * 64, {"data": refs["data"]}, store, tmp_path)
    batches = ClimateDomain().batches(ctx, torch.device("cpu"))
    assert isinstance(batches.finest, ChunkStream)
    batches.step = 2  # the monthly level: its condition carries each record's month
    x0, cond = batches.next(torch.Generator().manual_seed(0), 6)
    assert x0.shape == (6, 4, 8, 12) and cond.level == 2
    torch.testing.assert_close(cond.season.norm(dim=1), torch.ones(6))  # one month: a unit phase vector
    month = np.rint(np.degrees(np.arctan2(cond.season[:, 1], cond.season[:, 0]).numpy()) / 30) % 12 + 1
    year = cond.year.numpy() - (month - 6.5) / 12  # the time of month m of year y is y + (m - 6.5) / 12
    np.testing.assert_allclose(year, np.rint(year), atol=1e-9)
    batches.finest.close()

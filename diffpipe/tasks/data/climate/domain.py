"""Climate domain: builds or ingests the ClimateBench-layout store, trains a forcing-conditioned UNet over
lat x lon, samples an ensemble per held-out year, and scores it next to pattern scaling and the floors.

The network is a diffusers `UNet2DModel`. Its input is the noisy (tas, dtr, pr, pr90) field concatenated
with condition channels: `history_years` of SO2 and BC maps, cumulative CO2 and CH4 broadcast over the
grid, and three static channels (sin lat, sin lon, cos lon). The calendar year enters through the UNet's
class embedding (`class_embed_type="timestep"`: sinusoidal features of year - 1850 and an MLP, added to
the noise-time embedding). Grids whose sides are not multiples of 2^(levels-1) are padded (longitude
periodically, latitude by repetition) and cropped back, so any grid size works.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from diffusers import ModelMixin, SchedulerMixin, UNet2DModel

from diffpipe.errors import DataError, SpecError
from diffpipe.schemas import EvaluateStage, ModelSpec, Objective, SampleStage, UNet2DSpec
from diffpipe.schemas.climate import ClimateBenchFiles, ClimateData, SPFSpec
from diffpipe.storage.formats import open_dataset, write_json

from ...context import StageContext, StageOutput
from ...dask_cluster import dask_client
from ...nets.flowmap import network_fn
from ...nets.spf import build_spf_unet
from ...nets.unet2d import unet_block_types
from ...objectives import NetFn
from ...registry import domain
from ...sampling import CountingNet, sample
from ...search.run import make_search
from . import pyramid
from .batches import (
    CachedBatches,
    Forcing,
    condition_channels,
    read_split,
    static_channels,
    to_batch,
    training_megabytes,
)
from .builder import ClimateBuildOptions, build_climate_store
from .evaluation import figures, monthly_scores, pattern_scaling_forecast, score_all, scores_table
from .ingest import find_scenarios, ingest_climatebench
from .layout import (
    OUTPUT_VARIABLES,
    READ_BLOCK,
    cf_attributes,
    months_per_year,
    open_climate_store,
    scenario_view,
    yearly_view,
)
from .loader import ClimateSamples
from .pyramid import PyramidBatches, write_level
from .stream import ChunkStream

STORE = "climate.zarr"
SAMPLES_FILE = "samples.zarr"
MONTHLY_FILE = "monthly.zarr"
DASK_ONLY_OPTIONS = ("dask_address", "dask_workers")


def builder_options(data: ClimateData, ctx: StageContext) -> ClimateBuildOptions:
    """The builder's options from the spec (one to one) plus the runtime's Dask settings."""
    fields = data.source.model_dump(exclude={"kind"})
    fields["stats_scenarios"] = tuple(fields["stats_scenarios"] or data.train_scenarios)
    fields["scenarios"] = tuple(fields["scenarios"])
    return ClimateBuildOptions(**fields, dask_address=ctx.runtime.dask_address, dask_workers=ctx.runtime.dask_workers)


def check_file_scenarios(source: ClimateBenchFiles, data: ClimateData) -> None:
    """DataError when the files lack a scenario the split needs (checked before anything is written)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(source.uri, **source.storage_options)
    if not fs.exists(root):
        raise DataError(source.uri, "no such directory", expected="a folder of ClimateBench netCDF files")
    found = source.scenarios or tuple(find_scenarios(fs, root))
    needed = (*data.train_scenarios, data.test_scenario, *(source.stats_scenarios or ()))
    missing = [s for s in needed if s not in found]
    if found and missing:
        raise DataError(source.uri, f"no files for scenario(s) {', '.join(missing)}",
                        expected="inputs_<scenario>.nc and outputs_<scenario>.nc for " + ", ".join(needed),
                        found=", ".join(found))


def check_period(store: xr.Dataset, data: ClimateData, where: str) -> None:
    """DataError when the held-out scenario does not cover the evaluation period."""
    years = scenario_view(store, data.test_scenario)["time"].values
    first, last = data.evaluation_period
    if years[0] > first or years[-1] < last:
        raise DataError(f"{where} scenario '{data.test_scenario}'", "does not cover the evaluation period",
                        expected=f"years {first}..{last}", found=f"{years[0]}..{years[-1]}")


def check_yearly(store: xr.Dataset) -> None:
    """DataError for a monthly store under the single-level emulators (arch unet2d), which are yearly."""
    if months_per_year(store) > 1:
        raise DataError("data.source", "monthly outputs: the single-level emulators (arch unet2d) are yearly",
                        expected="outputs with one time entry per year, or model.arch spf with a monthly finest level",
                        found=f"{months_per_year(store)} records per year")


def padded(size: int, factor: int) -> int:
    """`size` rounded up to a multiple of `factor`."""
    return -(-size // factor) * factor


def pad_grid(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Pad (..., lat, lon) to multiples of `factor`: longitude periodically, latitude by repeating the last row."""
    ph, pw = padded(x.shape[-2], factor) - x.shape[-2], padded(x.shape[-1], factor) - x.shape[-1]
    if pw:
        x = torch.cat([x, x[..., :pw]], dim=-1)
    if ph:
        x = F.pad(x, (0, 0, 0, ph), mode="replicate")
    return x


def call_climate_unet(model: UNet2DModel, x: torch.Tensor, t: torch.Tensor, cond: Forcing) -> torch.Tensor:
    """The UNet on [noisy field, condition channels], padded to its resolution levels and cropped back."""
    factor = 2 ** (len(model.config.block_out_channels) - 1)
    h, w = x.shape[-2:]
    inputs = pad_grid(torch.cat([x, cond.channels().to(x.dtype)], dim=1), factor)
    year = cond.year_label() if model.config.class_embed_type == "timestep" else None
    return model(inputs, t, class_labels=year).sample[..., :h, :w]


@domain("climate")
class ClimateDomain:
    """Forcing -> (tas, dtr, pr, pr90) emulation in ClimateBench's layout."""

    def store_path(self, ctx: StageContext) -> Path:
        """The climate store of the data artifact."""
        return ctx.input_path("data") / STORE

    def build(self, ctx: StageContext) -> StageOutput:
        """Build (offline builder) or ingest (ClimateBench files) the store with Dask, then check the split."""
        data: ClimateData = ctx.pipeline.data
        dest, t0 = ctx.workdir / STORE, time.perf_counter()
        if isinstance(data.source, ClimateBenchFiles):
            source = data.source
            check_file_scenarios(source, data)
            with dask_client(ctx.runtime.dask_address, ctx.runtime.dask_workers) as client:
                ingest_climatebench(source.uri, dest, scenarios=source.scenarios, client=client,
                                    stats_scenarios=source.stats_scenarios or data.train_scenarios,
                                    storage_options=source.storage_options, chunk_records=source.chunk_records,
                                    bars=ctx.progress_bar)
            where = source.uri
        else:
            build_climate_store(dest, builder_options(data, ctx), ctx.progress_bar)
            where = "data.source"
        store = open_climate_store(dest)
        check_period(store, data, where)
        metrics = {"scenarios": list(store.attrs["scenarios"]), "grid": [store.sizes["lat"], store.sizes["lon"]],
                   "records": store.sizes["record"], "megabytes_uncompressed": store["outputs"].nbytes / 1e6,
                   "build_wall_s": time.perf_counter() - t0}
        write_json(ctx.workdir / "metrics.json", metrics)
        summary = (f"climate store: {len(metrics['scenarios'])} scenarios, grid {metrics['grid']}, "
                   f"{metrics['records']} member-years ({data.source.kind})")
        return StageOutput("dataset", metrics, summary)

    def build_model(self, model: ModelSpec, ctx: StageContext) -> ModelMixin:
        """A UNet2DModel taking the noisy fields plus condition channels, with a year embedding.

        `arch: spf` builds the pyramid's shared UNet (`pyramid.py`); `arch: unet2d` the single-level one.
        """
        if not isinstance(model, UNet2DSpec | SPFSpec):
            raise SpecError("model.arch", "the climate emulator is a UNet over lat x lon", "unet2d or spf",
                            f"'{model.arch}'")
        data: ClimateData = ctx.pipeline.data
        store = open_climate_store(self.store_path(ctx))
        grid = (store.sizes["lat"], store.sizes["lon"])
        variables = len(OUTPUT_VARIABLES)
        if isinstance(model, SPFSpec):
            return build_spf_unet(model, grid, variables + pyramid.condition_channels(len(model.levels)), variables,
                                  data.year_embedding, months_per_year(store))
        check_yearly(store)
        factor = 2 ** (len(model.block_out_channels) - 1)
        down, up = unet_block_types(len(model.block_out_channels), model.attention)
        return UNet2DModel(
            sample_size=(padded(grid[0], factor), padded(grid[1], factor)),
            in_channels=variables + condition_channels(data.history_years), out_channels=variables,
            block_out_channels=model.block_out_channels, layers_per_block=model.layers_per_block,
            down_block_types=down, up_block_types=up, norm_num_groups=model.norm_num_groups, dropout=model.dropout,
            class_embed_type="timestep" if data.year_embedding else None,
        )

    def net(self, model: ModelMixin) -> NetFn:
        """`net(x, t, forcing)`."""
        return network_fn(model, self.base_call)

    def base_call(self, model: ModelMixin, x: torch.Tensor, timestep: torch.Tensor, cond: Forcing) -> torch.Tensor:
        """The emulator UNet on noisy fields and forcing (what a FlowMapNet around it calls)."""
        return call_climate_unet(model, x, timestep, cond)

    def samples(self, ctx: StageContext, scenarios: list[str], history: int | None = None) -> ClimateSamples:
        """Normalised samples of `scenarios` from the data artifact (`history` years of forcing, default the spec's)."""
        return ClimateSamples(self.store_path(ctx), scenarios, history or ctx.pipeline.data.history_years)

    def static(self, ctx: StageContext) -> torch.Tensor:
        """Static geography channels of the store's grid."""
        store = open_climate_store(self.store_path(ctx))
        return static_channels(store["lat"].values, store["lon"].values)

    def batches(self, ctx: StageContext, device: torch.device) -> CachedBatches | ChunkStream | PyramidBatches:
        """Training scenarios: cached in memory up to `memory_budget_mb`, else streamed from zarr in whole chunks;
        the pyramid (`arch: spf`) holds its coarse levels' blocks and takes its finest level's records the same way."""
        data: ClimateData = ctx.pipeline.data
        spec = ctx.pipeline.stage(ctx.node)
        dropout = getattr(spec, "cond_dropout", 0.0)
        if dropout:
            raise SpecError(ctx.field_path("cond_dropout"), "the climate emulator is always conditioned on "
                            "its forcing (no classifier-free guidance)", "0", str(dropout))
        resumed = ctx.store.run_dir(ctx.key).steps()
        start, static = resumed[-1] if resumed else 0, self.static(ctx)
        model = ctx.pipeline.model
        if not isinstance(model, SPFSpec):
            samples = self.samples(ctx, list(data.train_scenarios))
            return self.records(ctx, samples, static, device, data.memory_budget_mb, start)
        samples = self.samples(ctx, list(data.train_scenarios), history=1)
        record_mb = training_megabytes(samples, static[0].numel()) / len(samples)
        part = int(min(READ_BLOCK, max(1, data.memory_budget_mb / 4 // record_mb)))  # a quarter of the budget
        coarse = pyramid.level_blocks(model.levels[:-1], pyramid.samples_parts(samples, part),
                                      pyramid.samples_keys(samples), static)
        budget = data.memory_budget_mb - sum(b.nbytes for b in coarse) / 1e6
        finest = self.records(ctx, samples, static, device, budget, start // len(model.levels))
        return PyramidBatches(pyramid.Pyramid(coarse, len(model.levels)), finest, samples.records, static, device,
                              start, samples.record_month)

    def records(self, ctx: StageContext, samples: ClimateSamples, static: torch.Tensor, device: torch.device,
                budget_mb: float, start_step: int) -> CachedBatches | ChunkStream:
        """The training records: cached in memory when they fit `budget_mb`, else streamed from zarr."""
        if training_megabytes(samples, static[0].numel()) <= budget_mb:
            return CachedBatches(samples, static, device)
        stream, batch = ctx.pipeline.data.stream, getattr(ctx.pipeline.stage(ctx.node), "batch_size", 32)
        return ChunkStream(samples, static, device, seed=ctx.runtime.seed, batch=batch,
                           read_records=stream.read_records, prefetch=stream.prefetch_reads, workers=stream.workers,
                           batches_ahead=stream.batches_ahead, echo=stream.echo, budget_mb=budget_mb,
                           start_step=start_step)

    def drop_condition(self, model: ModelMixin, cond: Forcing, drop: torch.Tensor) -> Forcing:
        """Forcing is never dropped: `batches` refuses a non-zero `cond_dropout`, so `drop` is all False."""
        if bool(drop.any()):
            raise ValueError("the climate emulator takes no condition dropout")
        return cond

    def check_sampling(self, ctx: StageContext, spec: SampleStage) -> None:
        """SpecError for sample options that have no meaning for the emulator (classes, guidance)."""
        if spec.classes is not None:
            raise SpecError(ctx.field_path("classes"), "climate samples have no classes", "null", str(spec.classes))
        if spec.guidance_scale != 1.0:
            raise SpecError(ctx.field_path("guidance_scale"), "the climate emulator has no classifier-free guidance",
                            "1.0", str(spec.guidance_scale))

    @torch.no_grad()
    def sample(self, ctx: StageContext, spec: SampleStage, model: ModelMixin, objective: Objective,
               scheduler: SchedulerMixin | None, info: dict[str, Any]) -> StageOutput:
        """`num_samples` members (1 for regression) for every year of the held-out scenario, as zarr
        (time, member, lat, lon) in physical units, written year block by year block."""
        self.check_sampling(ctx, spec)
        if isinstance(ctx.pipeline.model, SPFSpec):
            return self.sample_pyramid(ctx, spec, model, objective, scheduler)
        data: ClimateData = ctx.pipeline.data
        test = self.samples(ctx, [data.test_scenario])
        first_member = np.flatnonzero(test.record_member[test.records] == 0).tolist()
        _, years = to_batch(test[first_member], self.static(ctx))
        members = spec.num_samples if scheduler is not None else 1
        path = ctx.workdir / SAMPLES_FILE
        self.create_samples(ctx, path, years.year.numpy(), members)
        net, gen, device = CountingNet(self.net(model)), ctx.generator(offset=1000 + spec.seed), ctx.device
        search = make_search(ctx, spec)
        block, t0 = max(1, spec.batch_size // members), time.perf_counter()
        for start in range(0, len(first_member), block):
            cond = years[slice(start, start + block)]
            rows = cond[torch.arange(len(cond.year)).repeat_interleave(members)].to(device)
            shape = (len(rows.year), len(OUTPUT_VARIABLES), *cond.maps.shape[-2:])
            with ctx.autocast():
                x = sample(net, objective, scheduler, spec.scheduler.steps, shape, rows, gen, device, search)
            fields = test.denormalise(x.float().cpu()).reshape(len(cond.year), members, *shape[1:])
            self.write_block(path, fields.numpy(), slice(start, start + len(cond.year)))
        wall = time.perf_counter() - t0
        name = type(scheduler).__name__ if scheduler is not None else "direct (regression)"
        total = members * len(first_member)
        metrics = {"members": members, "years": len(first_member), "scheduler": name, "steps": spec.scheduler.steps,
                   "nfe_per_sample": net.calls // max(1, -(-len(first_member) // block)), "sampling_wall_s": wall,
                   "sampling_s_per_simulated_year": wall / len(first_member), "samples_per_s": total / wall,
                   **net.costs(total), **(search.metrics() if search else {})}
        summary = f"{members} member(s) x {len(first_member)} years of {data.test_scenario} with `{name}`."
        return StageOutput("samples", metrics, summary)

    @torch.no_grad()
    def sample_pyramid(self, ctx: StageContext, spec: SampleStage, model: ModelMixin, objective: Objective,
                       scheduler: SchedulerMixin | None) -> StageOutput:
        """Every level of the pyramid for the held-out scenario, coarse to fine, each level one batched solve
        over all its blocks and members; the finest level is `samples.zarr` when yearly, else `monthly.zarr` and
        its yearly means `samples.zarr`; coarser levels are `level_<k>.zarr`."""
        data: ClimateData = ctx.pipeline.data
        levels = ctx.pipeline.model.levels
        test = self.samples(ctx, [data.test_scenario])
        first_member = np.flatnonzero(test.record_member[test.records] == 0).tolist()
        split = read_split(test, first_member)
        blocks = pyramid.Pyramid(pyramid.level_blocks(levels, [pyramid.current_year(split)], pyramid.split_keys(split),
                                                      self.static(ctx)), len(levels))
        members = spec.num_samples if scheduler is not None else 1
        net, gen, device = CountingNet(self.net(model)), ctx.generator(offset=1000 + spec.seed), ctx.device

        def draw(shape: tuple[int, ...], cond: pyramid.PyramidForcing) -> torch.Tensor:
            with ctx.autocast():
                x = sample(net, objective, scheduler, spec.scheduler.steps, shape, cond.to(device), gen, device)
            return x.float().cpu()

        t0 = time.perf_counter()
        fields = pyramid.sample_levels(draw, blocks, members, spec.batch_size)
        wall = time.perf_counter() - t0
        store = open_climate_store(self.store_path(ctx))
        months = months_per_year(store)
        years = np.unique(split["year"].numpy())
        finest = test.denormalise(fields[-1])  # (blocks: years, or months year-major; member, variable, lat, lon)
        if months > 1:
            monthly = finest.reshape(len(years), months, *finest.shape[1:])
            pyramid.write_months(ctx.workdir / MONTHLY_FILE, monthly.numpy(), years, store, cf_attributes(store))
            finest = monthly.mean(1)  # the yearly fields: each member's sampled months averaged
        path = ctx.workdir / SAMPLES_FILE
        self.create_samples(ctx, path, years, members)
        self.write_block(path, finest.numpy(), slice(0, len(years)))
        for k, (level, b) in enumerate(zip(levels[:-1], blocks.blocks[:-1], strict=True)):
            write_level(ctx.workdir / f"level_{k}.zarr", test.denormalise(fields[k]).numpy(), b.year.numpy(),
                        store, level, cf_attributes(store))
        name = type(scheduler).__name__ if scheduler is not None else "direct (regression)"
        metrics = {"members": members, "years": len(years), "scheduler": name, "steps": spec.scheduler.steps,
                   "levels": [lv.model_dump() for lv in levels],
                   "blocks_per_level": [len(b.year) for b in blocks.blocks], "network_calls": net.calls,
                   "sampling_wall_s": wall, "sampling_s_per_simulated_year": wall / len(years),
                   "samples_per_s": members * len(years) / wall, **net.costs(members * len(years))}
        summary = (f"{members} member(s) x {len(years)} years of {data.test_scenario} from a {len(levels)}-level "
                   f"pyramid with `{name}` ({wall:.3g} s).")
        return StageOutput("samples", metrics, summary)

    def create_samples(self, ctx: StageContext, path: Path, years: np.ndarray, members: int) -> None:
        """An empty ClimateBench-layout ensemble store: one chunk per (year, variable), CF attributes kept."""
        import dask.array as da

        store = open_climate_store(self.store_path(ctx))
        shape, chunks = (len(years), members, store.sizes["lat"], store.sizes["lon"]), (1, members, -1, -1)
        cf = cf_attributes(store)
        ds = xr.Dataset(
            {v: (("time", "member", "lat", "lon"), da.zeros(shape, chunks=chunks, dtype=np.float32), cf.get(v, {}))
             for v in OUTPUT_VARIABLES},
            coords={"time": ("time", years.astype(np.int64), cf.get("time", {})), "member": np.arange(members),
                    "lat": store["lat"], "lon": store["lon"]},
            attrs={"stage": ctx.node, "scenario": ctx.pipeline.data.test_scenario},
        )
        ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=False, compute=False)

    def write_block(self, path: Path, fields: np.ndarray, years: slice) -> None:
        """Write (year, member, variable, lat, lon) fields into the time slice `years` of the ensemble store."""
        dims = ("time", "member", "lat", "lon")
        block = xr.Dataset({v: (dims, fields[:, :, i]) for i, v in enumerate(OUTPUT_VARIABLES)})
        block.to_zarr(path, region={"time": years}, zarr_format=3, consolidated=False)

    def evaluate(self, ctx: StageContext, spec: EvaluateStage) -> StageOutput:
        """ClimateBench NRMSE and ensemble scores on the held-out period, pattern scaling and floors beside them."""
        if set(spec.metrics) != {"domain"}:
            raise SpecError(ctx.field_path("metrics"), "climate evaluation computes the domain scores only",
                            "[domain]", str(spec.metrics))
        data: ClimateData = ctx.pipeline.data
        steps = ctx.progress_bar("evaluation steps (baseline, scores, figures)", 3)
        with steps as advance:
            store = open_climate_store(self.store_path(ctx), block=READ_BLOCK)
            prediction = open_dataset(ctx.input_path("samples") / SAMPLES_FILE)
            target = yearly_view(store, data.test_scenario)
            baseline = pattern_scaling_forecast(store, list(data.train_scenarios), data.test_scenario)
            advance(1)
            scores = score_all(prediction, baseline, target, data.evaluation_period)
            advance(1)
            label = "emulator" if prediction.sizes["member"] > 1 else "deterministic model"
            images = figures(prediction, baseline, target, ctx.workdir, label, data.evaluation_period)
            advance(1)
        metrics = {"test_scenario": data.test_scenario, "period": list(data.evaluation_period),
                   "members": prediction.sizes["member"], "target_members": target.sizes["member"], **scores}
        monthly = ctx.input_path("samples") / MONTHLY_FILE
        if monthly.exists():
            metrics["monthly"] = monthly_scores(open_dataset(monthly), scenario_view(store, data.test_scenario),
                                                data.evaluation_period)
        first, last = data.evaluation_period
        summary = (f"{data.test_scenario} {first}-{last}, {metrics['members']} member(s) vs "
                   f"{metrics['target_members']} ESM members\n\n" + scores_table(scores))
        return StageOutput("metrics", metrics, summary, images)

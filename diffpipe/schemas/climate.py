"""Climate emulation data (`data.kind: climate`): where the ClimateBench-layout store comes from, and the split.

The store comes from one `source`, a union on `kind`:

- `builder`: the offline builder (real RCMIP forcing, FaIR 2, our latitude-longitude layer); its fields
  mirror the builder's options one to one, units in the names;
- `files`: real ClimateBench files (`inputs_<scenario>.nc`, `outputs_<scenario>.nc`) under a directory
  or any fsspec URI.

Training uses `train_scenarios`; evaluation samples every year of `test_scenario` and scores
`evaluation_period`. Dask settings come from `runtime` (`dask_address`, `dask_workers`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from diffpipe.errors import SpecError

from .base import Strict

BUILDER_SCENARIOS = ("historical", "hist-GHG", "hist-aer", "ssp126", "ssp245", "ssp370", "ssp585", "ssp534-over")
TRAIN_SCENARIOS = ("historical", "hist-GHG", "hist-aer", "ssp126", "ssp370", "ssp585")


class ClimateBuilderSource(Strict):
    """The offline builder: every option of `ClimateBuildOptions` except the Dask ones (see `runtime`)."""

    kind: Literal["builder"] = "builder"
    nlat: int = Field(default=16, ge=3)
    """Grid rows, -90..90 degrees including the poles (96 for ClimateBench's grid)."""
    nlon: int = Field(default=32, ge=4)
    """Grid columns, 0..360 degrees (144 for ClimateBench's grid)."""
    members: int = Field(default=3, ge=1)
    """Ensemble members per scenario (internal-variability realisations)."""
    scenarios: tuple[str, ...] = BUILDER_SCENARIOS
    """Scenarios to build: historical, hist-GHG, hist-aer and any vendored RCMIP SSP."""
    stats_scenarios: tuple[str, ...] | None = None
    """Scenarios the normalisation statistics come from (None: the pipeline's `train_scenarios`)."""
    seed: int = 0
    """Seed of every random stream (global and local internal variability)."""
    chunk_records: int = Field(default=16, ge=1)
    """Records (member-years) per zarr chunk of the store: what one streaming read fetches."""
    ecs_K: float = Field(default=3.0, gt=0.0)
    """Equilibrium climate sensitivity of the FaIR 2 energy balance model (K)."""
    tcr_K: float = Field(default=1.8, gt=0.0)
    """Transient climate response (K); must be below ecs_K."""
    global_noise_forcing_W_m2: float = Field(default=0.5, ge=0.0)
    """FaIR stochastic forcing std sigma_eta (W m-2)."""
    global_noise_surface_W_m2: float = Field(default=0.5, ge=0.0)
    """FaIR stochastic surface disturbance std sigma_xi (W m-2)."""
    arctic_amplification: float = Field(default=2.5, gt=0.0)
    """Local/global warming ratio at the North Pole, before normalisation (1)."""
    antarctic_amplification: float = Field(default=1.5, gt=0.0)
    """Local/global warming ratio at the South Pole, before normalisation (1)."""
    land_sea_warming_ratio: float = Field(default=1.5, gt=0.0)
    """Land/ocean forced warming ratio (1)."""
    aerosol_local_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of the aerosol cooling pattern tied to the emission regions (0..1)."""
    heat_capacity_land_W_yr_m2_K: float = Field(default=0.5, gt=0.0)
    """Effective heat capacity of land (W yr m-2 K-1)."""
    heat_capacity_ocean_W_yr_m2_K: float = Field(default=6.3, gt=0.0)
    """Ocean mixed layer heat capacity, about 50 m of water (W yr m-2 K-1)."""
    local_feedback_W_m2_K: float = Field(default=1.3, gt=0.0)
    """Local damping setting the AR(1) memory exp(-feedback / capacity) (W m-2 K-1)."""
    noise_std_land_K: float = Field(default=0.6, ge=0.0)
    """Interannual tas std over land at the equator (K); grows by half towards the poles."""
    noise_std_ocean_K: float = Field(default=0.3, ge=0.0)
    """Interannual tas std over ocean at the equator (K); grows by half towards the poles."""
    noise_length_deg: float = Field(default=15.0, gt=0.0)
    """Spatial correlation length of internal variability (degrees)."""
    hydrological_sensitivity_per_K: float = 0.02
    """Global-mean precipitation change per K of warming (1/K)."""
    aerosol_precip_factor: float = 1.5
    """Extra precipitation suppression per K of aerosol cooling (1)."""
    pr_noise_fraction: float = Field(default=0.08, ge=0.0)
    """Interannual precipitation std as a fraction of the climatology (1)."""
    extreme_precip_scaling_per_K: float = 0.06
    """pr90 intensification per K of local warming (1/K)."""
    daily_rain_gamma_shape: float = Field(default=0.6, gt=0.0)
    """Shape of the daily precipitation gamma distribution (1)."""
    dtr_ghg_K_per_K: float = -0.05
    """Diurnal temperature range change per K of non-aerosol local warming (K/K)."""
    dtr_aerosol_K_per_K: float = 0.15
    """Diurnal temperature range change per K of aerosol local cooling (K/K)."""
    dtr_noise_std_K: float = Field(default=0.08, ge=0.0)
    """Interannual diurnal temperature range std over land (K; 40% of it over ocean)."""
    months_per_year: Literal[1, 12] = 1
    """Records per year and member: 1 (yearly means, ClimateBench's layout) or 12 (monthly means, whose 12 months
    average to the yearly values)."""
    seasonal_amplitude: float = Field(default=0.5, ge=0.0, lt=1.0)
    """Monthly store: modulation of the tas and dtr anomaly at the poles, largest in local winter (1)."""
    seasonal_precip_amplitude: float = Field(default=0.3, ge=0.0, lt=1.0)
    """Monthly store: modulation of the pr and pr90 anomaly at the poles, largest in local summer (1)."""
    monthly_noise_ratio: float = Field(default=2.0, ge=0.0)
    """Monthly store: std of a month's deviation from its year over the interannual std (1)."""

    @model_validator(mode="after")
    def _tcr_below_ecs(self) -> ClimateBuilderSource:
        if self.tcr_K >= self.ecs_K:
            raise ValueError(f"tcr_K ({self.tcr_K}) must be below ecs_K ({self.ecs_K})")
        return self

    def available(self) -> tuple[str, ...]:
        """Scenarios this source will hold."""
        return self.scenarios


class ClimateBenchFiles(Strict):
    """Real ClimateBench netCDF files: `inputs_<scenario>.nc` and `outputs_<scenario>.nc` in one folder."""

    kind: Literal["files"] = "files"
    uri: str = Field(min_length=1)
    """Directory or fsspec URI holding the files (`/data/climatebench`, `s3://bucket/climatebench`, ...)."""
    scenarios: tuple[str, ...] | None = None
    """Scenarios to ingest (None: every pair of files found; names come from the file names)."""
    stats_scenarios: tuple[str, ...] | None = None
    """Scenarios the normalisation statistics come from (None: the pipeline's `train_scenarios`)."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """fsspec storage options of the URI (credentials, endpoint, ...)."""
    chunk_records: int = Field(default=16, ge=1)
    """Records (member-years) per zarr chunk of the store: what one streaming read fetches."""

    def available(self) -> tuple[str, ...] | None:
        """Scenarios this source will hold (None: known only once the files are listed)."""
        return self.scenarios


class ClimateStream(Strict):
    """The streaming reader: chunk-aligned reads into a shuffle buffer, background threads ahead of training."""

    read_records: int | None = Field(default=None, ge=1)
    """Records per read, a multiple of the store's records per chunk (None: one chunk)."""
    prefetch_reads: int = Field(default=4, ge=1)
    """Reads in flight ahead of the shuffle buffer."""
    workers: int = Field(default=2, ge=1)
    """Background reader threads."""
    batches_ahead: int = Field(default=2, ge=1)
    """Batches a background thread gathers ahead of the training loop."""
    echo: int = Field(default=1, ge=1)
    """Data echoing: each read stays in the shuffle buffer `echo` times longer, so its records are drawn about
    `echo` times per epoch; above 1 when reads, not the model, limit training (1: every record about once)."""


ClimateSource = Annotated[ClimateBuilderSource | ClimateBenchFiles, Field(discriminator="kind")]


class ClimateData(Strict):
    """Climate emulation in ClimateBench's layout: forcing (CO2, CH4, SO2, BC) -> tas, dtr, pr, pr90 fields."""

    kind: Literal["climate"] = "climate"
    source: ClimateSource = Field(default_factory=ClimateBuilderSource)
    """Where the store comes from: `{kind: builder, ...}` or `{kind: files, uri: ...}`."""
    train_scenarios: tuple[str, ...] = TRAIN_SCENARIOS
    """Scenarios the emulator, the UNet and pattern scaling are trained on."""
    test_scenario: str = "ssp245"
    """Held-out scenario: every one of its years is sampled, `evaluation_period` is scored."""
    evaluation_period: tuple[int, int] = (2080, 2100)
    """First and last year (inclusive) of the scored window (ClimateBench: 2080-2100)."""
    history_years: int = Field(default=1, ge=1)
    """Years of forcing given to the network (this year and the ones before), as channels."""
    year_embedding: bool = True
    """Give the network the calendar year through the UNet's class embedding (sinusoidal, year - 1850)."""
    memory_budget_mb: float = Field(default=2048.0, gt=0.0)
    """Memory for training data (MB): a training split up to this size (float32) is read once into memory;
    a larger one streams from zarr with this much for its shuffle buffer, forcing maps and batches ahead
    (the pyramid of `arch: spf` takes its coarse levels' blocks out of it first)."""
    stream: ClimateStream = Field(default_factory=lambda: ClimateStream())
    """How a training split larger than `memory_budget_mb` is streamed from the store."""

    @model_validator(mode="after")
    def _check_split(self) -> ClimateData:
        if self.test_scenario in self.train_scenarios:
            raise ValueError(f"test_scenario '{self.test_scenario}' is also in train_scenarios")
        if self.evaluation_period[0] > self.evaluation_period[1]:
            raise ValueError(f"evaluation_period {self.evaluation_period} must be (first year, last year)")
        available = self.source.available()
        if available is not None:
            missing = [s for s in (*self.train_scenarios, self.test_scenario) if s not in available]
            if missing:
                raise ValueError(f"scenarios {missing} are not in source.scenarios {list(available)}")
        return self


class PyramidLevel(Strict):
    """One level of the space-time pyramid: fields averaged over a period (`period_years` or `period_months`) on a
    grid coarsened `space_factor`x."""

    space_factor: int = Field(ge=1)
    """Coarsening of lat and lon (the store's grid divided by it; 1: the store's grid)."""
    period_years: int | None = Field(default=None, ge=1)
    """Years each field averages (10: decadal, 1: yearly), in calendar blocks (1850-1859, 1860-1869, ...)."""
    period_months: int | None = Field(default=None, ge=1)
    """Months each field averages (1: monthly; a monthly store only), in calendar blocks within the year."""

    @model_validator(mode="after")
    def _one_period(self) -> PyramidLevel:
        if (self.period_years is None) == (self.period_months is None):
            raise ValueError("a pyramid level sets one of period_years and period_months")
        return self

    @property
    def months(self) -> int:
        """The period in months."""
        return self.period_years * 12 if self.period_years is not None else int(self.period_months)

    @property
    def period_field(self) -> str:
        """The name of the period field this level sets."""
        return "period_years" if self.period_years is not None else "period_months"


DEFAULT_LEVELS = (PyramidLevel(space_factor=4, period_years=10), PyramidLevel(space_factor=1, period_years=1))


class SPFSpec(Strict):
    """Spatiotemporal Pyramid Flow: one conditional UNet shared by every level of a space-time pyramid.

    Level 0 is the coarsest (longest period, coarsest grid); each finer level is conditioned on the
    forcing averaged over its period and on the coarser level's field of the block containing it, so
    every period of a scenario is sampled at once per level (no autoregression in time). The last level
    is the store's records on its grid: yearly, or monthly in a monthly store (evaluation scores the yearly
    means of the months, and the months).
    """

    arch: Literal["spf"] = "spf"
    levels: tuple[PyramidLevel, ...] = DEFAULT_LEVELS
    """Levels from coarse to fine; each level's period and space factor are multiples of the next level's; the
    last is `{space_factor: 1, period_years: 1}`, or `{space_factor: 1, period_months: 1}` on monthly data."""
    block_out_channels: tuple[int, ...] = (32, 64)
    """UNet channels per resolution level (one down/up block each)."""
    layers_per_block: int = Field(default=1, ge=1)
    """ResNet layers per block."""
    attention: bool = True
    """Self-attention in the lowest-resolution blocks."""
    norm_num_groups: int = Field(default=8, ge=1)
    """Groups of every GroupNorm (must divide every channel count)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout inside the ResNet blocks."""


def check_pyramid(levels: tuple[PyramidLevel, ...], grid: tuple[int, int] | None,
                  months_per_year: int | None = 1) -> None:
    """SpecError naming the first level that does not divide its coarser level's period or space factor, a year
    (a level in months), or the grid (when known); the finest level must be the store's records (yearly, or
    monthly in a monthly store; either when `months_per_year` is not known yet) on the store's grid."""
    last = len(levels) - 1
    finest = {"space_factor": 1, "period_years": 1} if months_per_year == 1 else {"space_factor": 1, "period_months": 1}
    allowed = (12, 1) if months_per_year is None else (12 // months_per_year,)
    if not levels or levels[-1].space_factor != 1 or levels[-1].months not in allowed:
        found = "no levels" if not levels else str(levels[-1].model_dump(exclude_none=True))
        kind = {1: "yearly", 12: "monthly (the store is monthly)", None: "yearly or monthly"}[months_per_year]
        raise SpecError(f"model.levels[{max(last, 0)}]", f"the finest level must be {kind} on the store's grid",
                        str(finest).replace("'", ""), found)
    for k, level in enumerate(levels):
        if level.period_months is not None and 12 % level.period_months:
            raise SpecError(f"model.levels[{k}].period_months", "does not divide a year", "1, 2, 3, 4, 6 or 12",
                            str(level.period_months))
    for k in range(last):
        for name in ("months", "space_factor"):
            coarse, fine = getattr(levels[k], name), getattr(levels[k + 1], name)
            if coarse % fine:
                field = levels[k + 1].period_field if name == "months" else name
                above = levels[k].period_field if name == "months" else name
                raise SpecError(f"model.levels[{k + 1}].{field}", f"does not divide the coarser level's {above}",
                                f"a divisor of {getattr(levels[k], above)} (model.levels[{k}].{above})",
                                str(getattr(levels[k + 1], field)))
    for k, level in enumerate(levels):
        if grid is not None and (grid[0] % level.space_factor or grid[1] % level.space_factor):
            raise SpecError(f"model.levels[{k}].space_factor", "does not divide the grid",
                            f"a common divisor of {grid[0]} x {grid[1]}", str(level.space_factor))

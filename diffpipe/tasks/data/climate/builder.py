"""Offline builder: the climate store (ingest's layout) from real forcing, FaIR 2 and our lat-lon layer.

One Dask task per (scenario, member) computes that member's whole time series (the AR(1) state is
sequential in time); the store's `chunk_records`-record chunks are cut from those series, one write task
per chunk. Memory per task is one or two members' series (about 36 MB each for 165 years at 96 x 144),
whatever the number of scenarios and members.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from diffpipe.errors import DataError

from ...context import ProgressBars, no_progress
from ...dask_cluster import dask_client
from ...dask_progress import compute
from . import spatial
from .forcing import (
    available_scenarios,
    calibrated_transfer,
    global_response,
    member_seed,
    pathway,
    scenario_years,
)
from .layout import (
    MAP_FORCERS,
    OUTPUT_VARIABLES,
    TEST_SCENARIO,
    ScenarioData,
    create_store,
    plan_layout,
    staged_store,
    store_writes,
    template,
    write_statistics,
)

DEFAULT_SCENARIOS = (
    "historical",
    "hist-GHG",
    "hist-aer",
    "ssp126",
    "ssp245",
    "ssp370",
    "ssp585",
    "ssp534-over",
)
OVERSHOOT_SCENARIO = "ssp534-over"
NOISE_STREAMS = {"tas": 0, "dtr": 1, "pr": 2, "pr90": 3, "monthly": 4}
MONTHS = 12


@dataclass(frozen=True)
class ClimateBuildOptions:
    """Every option of the offline climate builder, with its unit in the name or comment."""

    nlat: int = 16  # grid rows, -90..90 degrees including the poles (96 for the full profile)
    nlon: int = 32  # grid columns, 0..360 degrees (144 for the full profile)
    members: int = 3  # ensemble members per scenario
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS  # historical, hist-GHG, hist-aer and any vendored SSP
    stats_scenarios: tuple[str, ...] | None = (
        None  # normalisation statistics from these (None: all but ssp245
    )
    # and the overshoot scenario)
    seed: int = 0  # seed of every random stream (global and local variability)
    chunk_records: int = 16  # records (member-years) per zarr chunk of the store: one streaming read
    ecs_K: float = 3.0  # equilibrium climate sensitivity of the FaIR 2 energy balance model (K)
    tcr_K: float = 1.8  # transient climate response (K)
    global_noise_forcing_W_m2: float = 0.5  # FaIR stochastic forcing std sigma_eta (W m-2)
    global_noise_surface_W_m2: float = 0.5  # FaIR stochastic surface disturbance std sigma_xi (W m-2)
    arctic_amplification: float = (
        2.5  # local/global warming ratio at the North Pole, before normalisation (1)
    )
    antarctic_amplification: float = 1.5  # same at the South Pole (1)
    land_sea_warming_ratio: float = 1.5  # land/ocean forced warming ratio (1)
    aerosol_local_weight: float = (
        0.5  # share of the aerosol cooling pattern tied to the emission regions (0..1)
    )
    heat_capacity_land_W_yr_m2_K: float = 0.5  # effective heat capacity of land (W yr m-2 K-1)
    heat_capacity_ocean_W_yr_m2_K: float = 6.3  # ocean mixed layer, about 50 m (W yr m-2 K-1)
    local_feedback_W_m2_K: float = 1.3  # local damping setting the AR(1) memory exp(-feedback / capacity)
    noise_std_land_K: float = 0.6  # interannual tas std over land at the equator (K)
    noise_std_ocean_K: float = 0.3  # same over ocean (K); both grow by half towards the poles
    noise_length_deg: float = 15.0  # spatial correlation length of internal variability (degrees)
    hydrological_sensitivity_per_K: float = 0.02  # global mean precipitation change per K (1/K)
    aerosol_precip_factor: float = 1.5  # extra precipitation suppression per K of aerosol cooling (1)
    pr_noise_fraction: float = 0.08  # interannual precipitation std as a fraction of climatology (1)
    extreme_precip_scaling_per_K: float = 0.06  # pr90 intensification per K of local warming (1/K)
    daily_rain_gamma_shape: float = 0.6  # shape of the daily precipitation gamma distribution (1)
    dtr_ghg_K_per_K: float = -0.05  # diurnal range change per K of non-aerosol local warming (K/K)
    dtr_aerosol_K_per_K: float = 0.15  # diurnal range change per K of aerosol local cooling (K/K)
    dtr_noise_std_K: float = 0.08  # interannual diurnal range std over land (K; 40% of it over ocean)
    months_per_year: int = 1  # records per year and member: 1 (yearly means) or 12 (monthly means)
    seasonal_amplitude: float = 0.5  # winter/summer modulation of the tas anomaly at the poles (1)
    seasonal_precip_amplitude: float = 0.3  # local-summer modulation of the pr, pr90 anomalies at the poles (1)
    monthly_noise_ratio: float = 2.0  # std of a month's deviation from its year / the interannual std (1)
    dask_address: str | None = None  # scheduler address to scale out; None: a LocalCluster
    dask_workers: int = 2  # LocalCluster worker processes (1 thread each); 0: threads in this process

    def resolved_stats_scenarios(self) -> tuple[str, ...]:
        """Scenarios the normalisation statistics come from."""
        if self.stats_scenarios is not None:
            return self.stats_scenarios
        held_out = (TEST_SCENARIO, OVERSHOOT_SCENARIO)
        return tuple(s for s in self.scenarios if s not in held_out) or self.scenarios


def validate_options(options: ClimateBuildOptions) -> None:
    """Raise DataError for scenarios the vendored forcing cannot make or a bad grid or member count."""
    known = available_scenarios()
    for name in options.scenarios + tuple(options.stats_scenarios or ()):
        if name not in known:
            raise DataError(
                f"climate builder option 'scenarios' ({name})",
                "unknown scenario",
                expected=", ".join(known),
                found=name,
            )
    if options.months_per_year not in (1, MONTHS):
        raise DataError("climate builder option 'months_per_year'", "neither yearly nor monthly records",
                        expected=f"1 or {MONTHS}", found=str(options.months_per_year))
    if options.nlat < 3 or options.nlon < 4 or options.members < 1 or options.chunk_records < 1:
        raise DataError(
            "climate builder options nlat/nlon/members/chunk_records",
            "grid, ensemble or chunks too small",
            expected="nlat >= 3, nlon >= 4, members >= 1, chunk_records >= 1",
            found=f"{options.nlat} x {options.nlon}, {options.members} members, {options.chunk_records} per chunk",
        )


def _streams(options: ClimateBuildOptions, scenario: str, member: int) -> dict[str, np.random.Generator]:
    base = member_seed(options.seed, member, scenario)
    return {k: np.random.default_rng([base, v]) for k, v in NOISE_STREAMS.items()}


def _local_variability(
    options: ClimateBuildOptions,
    noise: spatial.CorrelatedNoise,
    scenario: str,
    member: int,
    years: int,
    ar1: np.ndarray,
) -> np.ndarray:
    """Unit-variance AR(1) tas variability; SSP members continue their historical member's state."""
    start = None
    if scenario not in ("historical", "hist-GHG", "hist-aer"):
        hist_years = scenario_years("historical").size
        hist = noise.draw(_streams(options, "historical", member)["tas"], hist_years)
        start = spatial.ar1_series(hist, ar1)[-1]
    return spatial.ar1_series(noise.draw(_streams(options, scenario, member)["tas"], years), ar1, start)


def member_fields(options: ClimateBuildOptions, scenario: str, member: int) -> np.ndarray:
    """(record, variable, lat, lon) float32 outputs of one member: tas, dtr (K), pr, pr90 (mm/day) anomalies of
    each year, or of each month (`months_per_year` 12; the months of a year average to its yearly values)."""
    lat, lon = spatial.climatebench_grid(options.nlat, options.nlon)
    land = spatial.land_mask(lat, lon)
    years = scenario_years(scenario)
    glob = global_response(
        scenario,
        member,
        options.seed,
        options.ecs_K,
        options.tcr_K,
        options.global_noise_forcing_W_m2,
        options.global_noise_surface_W_m2,
    )
    warm = spatial.warming_pattern(
        lat,
        land,
        options.arctic_amplification,
        options.antarctic_amplification,
        options.land_sea_warming_ratio,
    )
    aer = spatial.aerosol_pattern(lat, lon, land, years, options.aerosol_local_weight)
    forced_other = warm[None] * glob.other[:, None, None]
    forced_aer = aer * glob.aerosol[:, None, None]

    capacity = np.where(land, options.heat_capacity_land_W_yr_m2_K, options.heat_capacity_ocean_W_yr_m2_K)
    ar1 = np.exp(-options.local_feedback_W_m2_K / capacity)
    tas_std = interannual_std(options, lat, land)[0]
    noise = spatial.CorrelatedNoise.on_grid(lat, lon, options.noise_length_deg)
    streams = _streams(options, scenario, member)
    tas = (
        forced_other
        + forced_aer
        + tas_std * _local_variability(options, noise, scenario, member, years.size, ar1)
    )

    land_factor = np.where(land, 1.0, 0.4)
    dtr = land_factor * (
        options.dtr_ghg_K_per_K * forced_other
        + options.dtr_aerosol_K_per_K * forced_aer
        + options.dtr_noise_std_K * noise.draw(streams["dtr"], years.size)
    )

    pr0 = spatial.precipitation_climatology(lat, land)
    mean_pr = spatial.area_mean(pr0, lat)
    wet = spatial.wet_get_wetter(pr0, lat)
    hs = options.hydrological_sensitivity_per_K
    dpr_forced = (
        mean_pr
        * hs
        * (
            wet[None] * glob.other[:, None, None]
            + options.aerosol_precip_factor * aer * glob.aerosol[:, None, None]
        )
    )
    pr = dpr_forced + options.pr_noise_fraction * pr0 * noise.draw(streams["pr"], years.size)

    ratio90, sampling = spatial.gamma_quantile_terms(options.daily_rain_gamma_shape)
    daily_mean = np.maximum(pr0 + dpr_forced, 0.05 * pr0)
    intensify = np.exp((options.extreme_precip_scaling_per_K - hs) * tas)
    pr90 = ratio90 * (daily_mean * intensify - pr0) + sampling * daily_mean * noise.draw(
        streams["pr90"], years.size
    )
    yearly = np.stack([tas, dtr, pr, pr90], axis=1)
    if options.months_per_year == 1:
        return yearly.astype(np.float32)
    return monthly_fields(options, yearly, lat, land, noise, streams["monthly"]).astype(np.float32)


def interannual_std(options: ClimateBuildOptions, lat: np.ndarray, land: np.ndarray) -> np.ndarray:
    """(variable, lat, lon) interannual std of the unforced fields: tas, dtr (K), pr, pr90 (mm/day)."""
    polar = 1.0 + 0.5 * np.abs(np.sin(np.deg2rad(lat)))[:, None]
    tas = np.where(land, options.noise_std_land_K, options.noise_std_ocean_K) * polar
    dtr = np.where(land, 1.0, 0.4) * options.dtr_noise_std_K * np.ones_like(tas)
    pr0 = spatial.precipitation_climatology(lat, land)
    _, sampling = spatial.gamma_quantile_terms(options.daily_rain_gamma_shape)
    return np.stack([tas, dtr, options.pr_noise_fraction * pr0, sampling * pr0])


def seasonal_cycle(options: ClimateBuildOptions, lat: np.ndarray) -> np.ndarray:
    """(month, variable, lat, 1) factors on a year's anomaly, each averaging exactly 1 over the 12 months.

    tas and dtr: the anomaly peaks in local winter (January north, July south), by `seasonal_amplitude` at the
    poles and not at the equator, as polar amplification does (sea ice). pr and pr90: the change peaks in local
    summer (monsoon-like), by `seasonal_precip_amplitude` at the poles.
    """
    phase = np.cos(2 * np.pi * np.arange(MONTHS) / MONTHS)  # 1 in January, -1 in July; sums to 0
    hemisphere = np.sin(np.deg2rad(lat))  # + north, - south
    winter = 1.0 + options.seasonal_amplitude * phase[:, None] * hemisphere[None, :]
    summer = 1.0 - options.seasonal_precip_amplitude * phase[:, None] * hemisphere[None, :]
    return np.stack([winter, winter, summer, summer], axis=1)[..., None]


def monthly_fields(options: ClimateBuildOptions, yearly: np.ndarray, lat: np.ndarray, land: np.ndarray,
                   noise: spatial.CorrelatedNoise, rng: np.random.Generator) -> np.ndarray:
    """(year * 12, variable, lat, lon) monthly anomalies whose 12 months average to `yearly` (year, variable, lat,
    lon): the year's anomaly times its seasonal cycle, plus sub-annual weather, spatially correlated fields
    drawn each month (`monthly_noise_ratio` x the interannual std) less their mean over the year."""
    years, nvar = yearly.shape[:2]
    draws = noise.draw(rng, years * MONTHS * nvar).reshape(years, MONTHS, nvar, *yearly.shape[-2:])
    weather = (draws - draws.mean(axis=1, keepdims=True)) * np.sqrt(MONTHS / (MONTHS - 1))
    weather *= options.monthly_noise_ratio * interannual_std(options, lat, land)
    months = yearly[:, None] * seasonal_cycle(options, lat)[None] + weather
    return months.reshape(years * MONTHS, nvar, *yearly.shape[-2:])


def scenario_maps(options: ClimateBuildOptions, scenario: str) -> np.ndarray:
    """(year, forcer, lat, lon) SO2 and BC emission maps (kg m-2 s-1) of a scenario."""
    lat, lon = spatial.climatebench_grid(options.nlat, options.nlon)
    path, years = pathway(scenario), scenario_years(scenario)
    out = path.output_slice()
    maps = [
        spatial.emission_maps(lat, lon, years, path.so2_emissions[out], "SO2"),
        spatial.emission_maps(lat, lon, years, path.bc_emissions[out], "BC"),
    ]
    return np.stack(maps, axis=1).astype(np.float32)


CF_ATTRIBUTES = {
    "tas": {"units": "K", "long_name": "near-surface air temperature anomaly from pre-industrial control"},
    "diurnal_temperature_range": {"units": "K", "long_name": "diurnal temperature range anomaly"},
    "pr": {"units": "mm day-1", "long_name": "precipitation anomaly"},
    "pr90": {
        "units": "mm day-1",
        "long_name": "anomaly of the annual 90th percentile of daily precipitation",
    },
    "CO2": {"units": "GtCO2", "long_name": "cumulative anthropogenic CO2 emissions since 1850"},
    "CH4": {"units": "GtCH4 yr-1", "long_name": "anthropogenic CH4 emissions"},
    "SO2": {"units": "kg m-2 s-1", "long_name": "anthropogenic SO2 emissions"},
    "BC": {"units": "kg m-2 s-1", "long_name": "anthropogenic black carbon emissions"},
    "time": {"units": "year", "long_name": "year"},
}


def _store_attrs(options: ClimateBuildOptions) -> dict[str, object]:
    transfer = calibrated_transfer(options.ecs_K, options.tcr_K)
    return {
        "source": "diffpipe offline climate builder: RCMIP v5.1.0 forcing (fair 1.6.4 wheel), FaIR 2 "
        "3-layer energy balance model, idealised latitude-longitude layer",
        "builder_options": json.dumps(asdict(options), sort_keys=True),
        "ebm_ocean_heat_transfer_W_m2_K": list(transfer),
        "cf_attributes": json.dumps(CF_ATTRIBUTES, sort_keys=True),
    }


def _grid(options: ClimateBuildOptions) -> tuple[xr.DataArray, xr.DataArray]:
    lat, lon = spatial.climatebench_grid(options.nlat, options.nlon)
    return (
        xr.DataArray(lat, dims="lat", attrs={"units": "degrees_north", "standard_name": "latitude"}),
        xr.DataArray(lon, dims="lon", attrs={"units": "degrees_east", "standard_name": "longitude"}),
    )


def build_climate_store(dest: Path, options: ClimateBuildOptions | None = None,
                        bars: ProgressBars = no_progress) -> Path:
    """Build every scenario and member with Dask and publish the climate store at `dest` atomically; `bars` shows
    the build's Dask tasks as they finish."""
    options = options or ClimateBuildOptions()
    validate_options(options)
    plans = plan_layout([(s, scenario_years(s), options.members) for s in options.scenarios],
                        options.months_per_year)
    shape = (len(OUTPUT_VARIABLES), options.nlat, options.nlon)
    map_shape = (len(MAP_FORCERS), options.nlat, options.nlon)
    with dask_client(options.dask_address, options.dask_workers) as client, staged_store(dest) as tmp:
        create_store(tmp, template(plans, *_grid(options), _store_attrs(options), options.chunk_records))
        scenarios = []
        for plan in plans:
            outputs = [
                da.from_delayed(
                    dask.delayed(member_fields)(options, plan.name, m), (plan.member_length, *shape),
                    dtype=np.float32,
                )
                for m in range(plan.members)
            ]
            maps = da.from_delayed(
                dask.delayed(scenario_maps)(options, plan.name), (plan.steps, *map_shape), dtype=np.float32
            )
            scenarios.append(ScenarioData(outputs, maps, pathway(plan.name).scalar_inputs()))
        compute(*store_writes(tmp, scenarios), bars=bars, what="store tasks", client=client)
        write_statistics(tmp, options.resolved_stats_scenarios())
    return Path(dest)

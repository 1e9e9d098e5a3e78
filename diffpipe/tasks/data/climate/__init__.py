"""Climate emulation data: ClimateBench ingest, the offline builder, the zarr store layout and the loader."""

from .builder import DEFAULT_SCENARIOS, ClimateBuildOptions, build_climate_store
from .ingest import ingest_climatebench
from .layout import (
    GLOBAL_FORCERS,
    MAP_FORCERS,
    OUTPUT_VARIABLES,
    TEST_SCENARIO,
    open_climate_store,
    scenario_view,
)
from .loader import ClimateSamples, batch_loader

__all__ = [
    "DEFAULT_SCENARIOS",
    "GLOBAL_FORCERS",
    "MAP_FORCERS",
    "OUTPUT_VARIABLES",
    "TEST_SCENARIO",
    "ClimateBuildOptions",
    "ClimateSamples",
    "batch_loader",
    "build_climate_store",
    "ingest_climatebench",
    "open_climate_store",
    "scenario_view",
]

"""Held-out scoring of a climate ensemble next to linear pattern scaling and the internal-variability floor.

Everything is lazy (xarray over Dask) until `evaluate_climate` computes a whole score set in one pass.
Pattern scaling is fitted on the training scenarios here, at evaluation time: per grid cell, each
variable regressed on the member's global-mean tas; for the held-out scenario the global-mean tas is
itself regressed on global forcers (cumulative CO2, CH4, area-mean SO2 and BC emissions), fitted on the
training scenarios' ensemble-mean global tas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from diffpipe.tasks.climate_baselines import GlobalTemperatureRegression, PatternScaling
from diffpipe.tasks.metrics.climate import (
    area_mean,
    evaluate_climate,
    evaluate_monthly,
    plot_global_series,
    plot_mean_maps,
)

from .layout import GLOBAL_FORCERS, MAP_FORCERS, OUTPUT_VARIABLES, yearly_view

FLOOR_PREFIX = "floor_"


def global_forcers(view: xr.Dataset) -> xr.Dataset:
    """Per-year global predictors of a scenario view: CO2, CH4 and area means of the SO2 and BC maps."""
    return xr.Dataset({n: view[n] for n in GLOBAL_FORCERS} | {n: area_mean(view[n]) for n in MAP_FORCERS})


def pattern_scaling_forecast(store: xr.Dataset, train: Sequence[str], test: str) -> xr.Dataset:
    """Pattern-scaling prediction (time, lat, lon) of every output variable for scenario `test`."""
    views = {s: yearly_view(store, s) for s in train}
    fields = xr.concat(
        [views[s][list(OUTPUT_VARIABLES)].stack(sample=("member", "time")).drop_vars(["sample", "member", "time"])
         for s in train], dim="sample")
    global_tas = area_mean(fields["tas"])
    patterns = PatternScaling.fit(fields, global_tas, ["sample"])
    regression = fit_global_response(store, train)
    test_view = yearly_view(store, test)
    forecast = patterns.predict(regression.predict(global_forcers(test_view).compute()))
    return forecast.transpose("time", "lat", "lon")


def fit_global_response(store: xr.Dataset, scenarios: Sequence[str]) -> GlobalTemperatureRegression:
    """Ensemble-mean global tas regressed on the global forcers, over every year of `scenarios`."""
    views = [yearly_view(store, s) for s in scenarios]
    predictors = xr.concat([global_forcers(v).drop_vars("time") for v in views], dim="time")
    ensemble_tas = xr.concat([area_mean(v["tas"].mean("member")).drop_vars("time") for v in views], dim="time")
    return GlobalTemperatureRegression.fit(predictors.compute(), ensemble_tas.compute())


def split_floors(scores: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(model scores, internal-variability floors) of `evaluate_climate`'s per-variable output."""
    model = {v: {k: x for k, x in s.items() if not k.startswith(FLOOR_PREFIX)} for v, s in scores.items()}
    cut = len(FLOOR_PREFIX)
    floor = {v: {k[cut:]: x for k, x in s.items() if k.startswith(FLOOR_PREFIX)} for v, s in scores.items()}
    return model, floor


def score_all(prediction: xr.Dataset, baseline: xr.Dataset, target: xr.Dataset,
              period: tuple[int, int]) -> dict[str, dict[str, dict[str, Any]]]:
    """Model, pattern-scaling and floor scores per variable (floors from the target members)."""
    variables = list(OUTPUT_VARIABLES)
    model, floor = split_floors(evaluate_climate(prediction, target, variables, period))
    baseline_scores, _ = split_floors(evaluate_climate(baseline, target, variables, period))
    return {"model": model, "pattern_scaling": baseline_scores, "internal_variability_floor": floor}


def monthly_scores(prediction: xr.Dataset, target: xr.Dataset,
                   period: tuple[int, int]) -> dict[str, dict[str, dict[str, Any]]]:
    """Ensemble scores of monthly samples (time, month, member, lat, lon) against the monthly target members, and
    the internal-variability floor, per variable over the months of `period`."""
    model, floor = split_floors(evaluate_monthly(prediction, target, list(OUTPUT_VARIABLES), period))
    return {"model": model, "internal_variability_floor": floor}


def scores_table(scores: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table: one row per (variable, score), columns model, pattern scaling, floor."""
    rows = ["| variable | score | model | pattern scaling | floor |", "|---|---|---|---|---|"]
    for var, model in scores["model"].items():
        for name, value in model.items():
            if isinstance(value, float):
                ps = scores["pattern_scaling"][var].get(name, float("nan"))
                floor = scores["internal_variability_floor"][var].get(name, float("nan"))
                rows.append(f"| {var} | {name} | {value:.4g} | {ps:.4g} | {floor:.4g} |")
    return "\n".join(rows)


def figures(prediction: xr.Dataset, baseline: xr.Dataset, target: xr.Dataset, folder: Path, label: str,
            period: tuple[int, int]) -> dict[str, Path]:
    """Mean maps over `period` and global-mean series (emulator, pattern scaling, target) for tas and pr."""
    out = {}
    for var in ("tas", "pr"):
        units = target[var].attrs.get("units", "")
        out[f"{var} mean map"] = plot_mean_maps(prediction[var], target[var], folder / f"map_{var}.png",
                                               f"{label}: {var} ({units})", period)
        series = {"target (ESM members)": target[var], label: prediction[var], "pattern scaling": baseline[var]}
        out[f"{var} global mean"] = plot_global_series(series, folder / f"series_{var}.png",
                                                       f"{var}: global mean, members' range", units)
    return out

"""Linear pattern scaling (ClimateBench / Luetjens et al. baseline) on xarray, lazy through Dask.

Each grid cell of each variable is regressed on global-mean surface temperature:
field(cell, t) = intercept(cell) + slope(cell) * T_global(t). For a held-out scenario T_global is
itself predicted from the forcing: a least-squares fit on cumulative CO2 and CH4 emissions
(`GlobalTemperatureRegression`), as pattern-scaling emulators do with a simple climate model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr


@dataclass(frozen=True)
class PatternScaling:
    """Per-cell linear regression of every variable on global-mean temperature."""

    intercept: xr.Dataset
    slope: xr.Dataset

    @classmethod
    def fit(cls, fields: xr.Dataset, global_tas: xr.DataArray, sample_dims: Sequence[str]) -> PatternScaling:
        """Ordinary least squares over `sample_dims` (e.g. member, time); `global_tas` spans those dims."""
        dims = list(sample_dims)
        predictor = global_tas.broadcast_like(fields[next(iter(fields.data_vars))])
        x_mean = predictor.mean(dims)
        dx = predictor - x_mean
        var_x = (dx**2).mean(dims)
        slopes, intercepts = {}, {}
        for name, field in fields.data_vars.items():
            y_mean = field.mean(dims)
            slopes[name] = (dx * (field - y_mean)).mean(dims) / var_x
            intercepts[name] = y_mean - slopes[name] * x_mean
        return cls(xr.Dataset(intercepts).compute(), xr.Dataset(slopes).compute())

    def predict(self, global_tas: xr.DataArray) -> xr.Dataset:
        """Fields for a global-mean temperature series (any dims, e.g. time)."""
        return self.intercept + self.slope * global_tas

    def to_dataset(self) -> xr.Dataset:
        """Both coefficient sets in one Dataset (`intercept_<var>`, `slope_<var>`) for storage."""
        return xr.merge(
            [
                self.intercept.rename({k: f"intercept_{k}" for k in self.intercept.data_vars}),
                self.slope.rename({k: f"slope_{k}" for k in self.slope.data_vars}),
            ]
        )

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> PatternScaling:
        """Inverse of `to_dataset`."""
        pick = {
            prefix: {k[len(prefix) :]: ds[k] for k in ds.data_vars if k.startswith(prefix)}
            for prefix in ("intercept_", "slope_")
        }
        return cls(xr.Dataset(pick["intercept_"]), xr.Dataset(pick["slope_"]))


@dataclass(frozen=True)
class GlobalTemperatureRegression:
    """T_global = c0 + sum_i c_i * predictor_i, fitted by least squares (predictors: e.g. CO2, CH4)."""

    names: tuple[str, ...]
    coefficients: np.ndarray

    @classmethod
    def fit(cls, predictors: xr.Dataset, global_tas: xr.DataArray) -> GlobalTemperatureRegression:
        """Fit on samples along the predictors' single dimension (e.g. stacked scenario-years)."""
        names = tuple(predictors.data_vars)
        design = np.column_stack([np.ones(global_tas.size)] + [predictors[n].values.ravel() for n in names])
        coefficients, *_ = np.linalg.lstsq(design, np.asarray(global_tas.values).ravel(), rcond=None)
        return cls(names, coefficients)

    def predict(self, predictors: xr.Dataset) -> xr.DataArray:
        """Global-mean temperature for the predictors' samples."""
        return self.coefficients[0] + sum(
            c * predictors[n] for c, n in zip(self.coefficients[1:], self.names, strict=True)
        )

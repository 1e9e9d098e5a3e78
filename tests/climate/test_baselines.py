"""Linear pattern scaling recovers exactly linear fields; the global regression recovers its coefficients."""

from __future__ import annotations

import numpy as np
import xarray as xr

from diffpipe.tasks.climate_baselines import GlobalTemperatureRegression, PatternScaling


def test_pattern_scaling_recovers_a_linear_field() -> None:
    rng = np.random.default_rng(0)
    glob = xr.DataArray(rng.uniform(0, 4, (2, 30)), dims=("member", "time"))
    slope = xr.DataArray(rng.normal(1, 0.5, (3, 5)), dims=("lat", "lon"))
    intercept = xr.DataArray(rng.normal(0, 0.2, (3, 5)), dims=("lat", "lon"))
    fields = xr.Dataset({"tas": intercept + slope * glob, "pr": 0.1 - 0.02 * slope * glob}).chunk({"time": 7})
    model = PatternScaling.fit(fields, glob, ["member", "time"])
    xr.testing.assert_allclose(model.slope["tas"], slope)
    xr.testing.assert_allclose(model.intercept["tas"], intercept)
    test_glob = xr.DataArray([0.5, 2.5, 5.0], dims="time")
    xr.testing.assert_allclose(model.predict(test_glob)["pr"], 0.1 - 0.02 * slope * test_glob)
    again = PatternScaling.from_dataset(model.to_dataset())
    xr.testing.assert_allclose(again.predict(test_glob), model.predict(test_glob))


def test_global_temperature_regression() -> None:
    co2 = xr.DataArray(np.linspace(0, 5000, 40), dims="sample")
    ch4 = xr.DataArray(np.sin(np.arange(40.0)) * 0.2 + 0.3, dims="sample")
    predictors = xr.Dataset({"CO2": co2, "CH4": ch4})
    tas = 0.1 + 4.5e-4 * co2 + 1.2 * ch4
    model = GlobalTemperatureRegression.fit(predictors, tas)
    np.testing.assert_allclose(model.coefficients, [0.1, 4.5e-4, 1.2], rtol=1e-8, atol=1e-10)
    xr.testing.assert_allclose(model.predict(predictors), tas)

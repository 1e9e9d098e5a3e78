"""ClimateBench NRMSE, ensemble scores and floors against hand-computed values on tiny arrays; plots."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from diffpipe.tasks.metrics import climate as cm

LAT = np.array([-60.0, 0.0, 60.0])
LON = np.array([0.0, 90.0, 180.0, 270.0])
YEARS = np.arange(2078, 2102)


def field(values: np.ndarray, member: bool = False) -> xr.DataArray:
    """A DataArray on the tiny grid with integer years."""
    dims = ("member", "time", "lat", "lon") if member else ("time", "lat", "lon")
    coords = {"time": YEARS, "lat": LAT, "lon": LON}
    return xr.DataArray(values, dims=dims, coords=coords)


@pytest.fixture
def target() -> xr.DataArray:
    rng = np.random.default_rng(0)
    return field(2.0 + rng.normal(0, 0.3, (3, YEARS.size, 3, 4)), member=True)


def test_lat_weights_have_mean_one() -> None:
    w = cm.lat_weights(xr.DataArray(LAT, dims="lat"))
    np.testing.assert_allclose(w.values, np.array([0.5, 1.0, 0.5]) / (2 / 3))


def test_nrmse_of_perfect_prediction_is_zero(target: xr.DataArray) -> None:
    mean = target.mean("member")
    scores = cm.nrmse(cm.evaluation_window(mean), cm.evaluation_window(mean))
    assert all(float(v) == 0.0 for v in scores.values())


def test_nrmse_of_constant_offset_by_hand() -> None:
    y = field(np.full((YEARS.size, 3, 4), 2.0))
    scores = cm.nrmse(cm.evaluation_window(y + 0.5), cm.evaluation_window(y))
    assert float(scores["nrmse_spatial"]) == pytest.approx(0.25)  # 0.5 / |2|
    assert float(scores["nrmse_global"]) == pytest.approx(0.25)
    assert float(scores["nrmse_total"]) == pytest.approx(0.25 * 6)


def test_nrmse_uses_window_and_latitude_weights() -> None:
    y = field(np.ones((YEARS.size, 3, 4)))
    x = y.copy()
    x[:, 1, :] += 3.0  # equator only: weighted mean error = 3 * 1 / 2 (weights 0.75, 1.5, 0.75 over 3 rows)
    x.loc[{"time": 2078}] += 100.0  # outside 2080-2100: must not count
    scores = cm.nrmse(cm.evaluation_window(x), cm.evaluation_window(y))
    assert float(scores["nrmse_global"]) == pytest.approx(1.5)
    assert float(scores["nrmse_spatial"]) == pytest.approx(np.sqrt(9 * 1.5 / 3))


def test_crps_of_point_ensemble_is_mae(target: xr.DataArray) -> None:
    obs = target.isel(member=0)
    point = obs.mean(("lat", "lon")).broadcast_like(obs) + 0.1
    ensemble = xr.concat([point] * 4, dim="member")
    scores = cm.crps_fair(ensemble, obs)
    mae = cm.area_mean(abs(point - obs)).mean("time")
    assert float(scores["crps"]) == pytest.approx(float(mae))
    assert float(scores["crps_spread_term"]) == pytest.approx(0.0)


def test_fair_crps_two_members_by_hand() -> None:
    ens = field(np.stack([np.zeros((YEARS.size, 3, 4)), np.full((YEARS.size, 3, 4), 2.0)]), member=True)
    obs = field(np.ones((YEARS.size, 3, 4)))
    # mean |X - y| = 1, sum over ordered pairs |X - X'| = 4, 4 / (2 * 2 * 1) = 1  ->  CRPS 0
    assert float(cm.crps_fair(ens, obs)["crps"]) == pytest.approx(0.0)


def test_fair_crps_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(3)
    ens, obs = rng.normal(size=(5, YEARS.size, 3, 4)), rng.normal(size=(YEARS.size, 3, 4))
    m = ens.shape[0]
    pairs = sum(np.abs(ens[i] - ens[j]) for i, j in itertools.product(range(m), range(m)))
    brute = np.abs(ens - obs).mean(0) - pairs / (2 * m * (m - 1))
    crps, _, _ = cm.crps_fields(field(ens, member=True), field(obs))
    np.testing.assert_allclose(crps.values, brute, rtol=1e-12)


def test_spread_skill_and_rank_histogram() -> None:
    ens = field(np.stack([np.zeros((YEARS.size, 3, 4)), np.full((YEARS.size, 3, 4), 2.0)]), member=True)
    scores = cm.spread_skill(ens, field(np.full((YEARS.size, 3, 4), 3.0)))
    assert float(scores["skill_rmse"]) == pytest.approx(2.0)
    assert float(scores["spread"]) == pytest.approx(np.sqrt(2.0 * 1.5))  # var ddof 1 = 2, x (M + 1) / M
    below = cm.rank_histogram(ens, field(np.full((YEARS.size, 3, 4), -1.0)))
    np.testing.assert_allclose(below.values, [1.0, 0.0, 0.0])
    middle = cm.rank_histogram(ens, field(np.ones((YEARS.size, 3, 4))))
    np.testing.assert_allclose(middle.values, [0.0, 1.0, 0.0])


def test_floor_of_identical_members_is_zero() -> None:
    same = field(np.stack([np.full((YEARS.size, 3, 4), 1.5)] * 3), member=True)
    scores = cm.variable_scores(same, same)
    assert scores["floor_nrmse_total"] == 0.0 and float(scores["floor_crps"]) == 0.0


def test_evaluate_is_lazy_and_matches_numpy(target: xr.DataArray) -> None:
    rng = np.random.default_rng(1)
    pred = field(2.1 + rng.normal(0, 0.3, (4, YEARS.size, 3, 4)), member=True)
    lazy_scores = cm.variable_scores(
        pred.chunk({"member": 1, "time": 5}), target.chunk({"member": 1, "time": 5})
    )
    assert lazy_scores["crps"].chunks is not None  # nothing computed yet
    eager = cm.evaluate_climate(xr.Dataset({"tas": pred}), xr.Dataset({"tas": target}), ["tas"])["tas"]
    lazy = cm.evaluate_climate(
        xr.Dataset({"tas": pred.chunk({"time": 5})}), xr.Dataset({"tas": target.chunk({"time": 5})}), ["tas"]
    )["tas"]
    assert lazy.keys() == eager.keys()
    for key in eager:
        np.testing.assert_allclose(lazy[key], eager[key], rtol=1e-10)
    assert {
        "nrmse_total",
        "floor_nrmse_total",
        "crps",
        "floor_crps",
        "spread_skill_ratio",
        "floor_spread_skill_ratio",
        "rank_histogram",
        "floor_rank_histogram",
    } <= eager.keys()
    assert len(eager["rank_histogram"]) == 5 and sum(eager["rank_histogram"]) == pytest.approx(1.0)


def test_plots_write_png(target: xr.DataArray, tmp_path: Path) -> None:
    maps = cm.plot_mean_maps(target + 0.2, target, tmp_path / "maps.png", "tas")
    series = cm.plot_global_series(
        {"target": target, "emulator": target + 0.2}, tmp_path / "series.png", "tas", "K"
    )
    for path in (maps, series):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_area_mean_renormalises_weights_over_valid_cells() -> None:
    # a constant field with NaN cells at the equator (weights above 1): the old mean of w * x over the
    # valid cells gave 2 * mean(w over valid) = 1.6, not 2
    x = field(np.full((YEARS.size, 3, 4), 2.0))
    x[:, 1, :2] = np.nan
    np.testing.assert_allclose(cm.area_mean(x).values, 2.0, rtol=1e-12)
    rng = np.random.default_rng(5)
    y = field(rng.normal(size=(YEARS.size, 3, 4)))
    y[:, 0, 3] = np.nan
    w = np.broadcast_to(np.cos(np.deg2rad(LAT))[:, None], (3, 4))
    valid = np.isfinite(y.values)
    by_hand = np.where(valid, y.values * w, 0).sum((1, 2)) / np.where(valid, w, 0).sum((1, 2))
    np.testing.assert_allclose(cm.area_mean(y).values, by_hand, rtol=1e-12)


def test_scores_of_a_masked_field_ignore_the_masked_cells() -> None:
    y = field(np.full((YEARS.size, 3, 4), 2.0))
    x = y + 0.5
    y[:, 1, 0] = np.nan  # a cell without data (e.g. a land-only variable over ocean)
    scores = cm.nrmse(x, y)
    assert float(scores["nrmse_global"]) == pytest.approx(0.25)
    assert float(scores["nrmse_spatial"]) == pytest.approx(0.25)
    ens = xr.concat([x, x], dim="member")
    assert float(cm.crps_fair(ens, y)["crps"]) == pytest.approx(0.5)
    below = xr.concat([y.fillna(0.0) - 0.5] * 2, dim="member")  # every member below y where y exists
    np.testing.assert_allclose(cm.rank_histogram(below, y).values, [0.0, 0.0, 1.0])

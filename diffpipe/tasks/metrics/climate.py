"""Climate emulation scores, lazy through xarray/Dask: ClimateBench NRMSE and area-weighted ensemble scores.

Conventions (ClimateBench, WeatherBench 2): w = cos(lat) normalised to mean 1; <f> = weighted mean
over (lat, lon), sum(w f) / sum(w) over the cells where f is defined (NaN cells drop out); |f| = mean
over the evaluation years (ssp245, 2080-2100 by default).

- N = |<|y|>|, NRMSE_s = sqrt(<(|x| - |y|)^2>) / N, NRMSE_g = sqrt(|(<x> - <y>)^2|) / N,
  NRMSE_t = NRMSE_s + 5 NRMSE_g, with x the (ensemble-mean) prediction and y the ensemble-mean target.
- Ensemble scores compare the predicted ensemble with each target member in turn (averaged over
  members): fair CRPS = mean_m |X_m - y| - sum_{m,m'} |X_m - X_m'| / (2 M (M - 1)) per cell and year,
  then area- and time-averaged (M = 1 gives the absolute error); spread/skill = sqrt(<|var_m X|>
  (M + 1) / M) / sqrt(<|(mean_m X - y)^2|>); rank histogram = area-weighted frequency of the number
  of members below y.
- Internal-variability floor: the same score with one target member as the prediction (NRMSE,
  against the mean of the others) or the other members as the ensemble (ensemble scores).

Every function returns lazy 0-d DataArrays; `evaluate_climate` computes them in one Dask pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diffpipe.tasks.plotting import serialized

PERIOD = (2080, 2100)
SPACE = ("lat", "lon")


def lat_weights(lat: xr.DataArray) -> xr.DataArray:
    """cos(latitude) normalised to mean 1."""
    w = np.cos(np.deg2rad(lat))
    return w / w.mean()


def area_mean(x: xr.DataArray) -> xr.DataArray:
    """Latitude-weighted mean over (lat, lon); NaN cells are left out and the weights renormalised over the rest."""
    return x.weighted(lat_weights(x["lat"])).mean(SPACE)


def evaluation_window(x: xr.DataArray, period: tuple[int, int] = PERIOD) -> xr.DataArray:
    """The years `period[0]..period[1]` (inclusive) of an integer-year time axis."""
    return x.sel(time=slice(*period))


def nrmse(prediction: xr.DataArray, target: xr.DataArray) -> dict[str, xr.DataArray]:
    """ClimateBench NRMSE spatial, global and total of a (time, lat, lon) prediction vs the target."""
    normaliser = abs(area_mean(target.mean("time")))
    spatial = np.sqrt(area_mean((prediction.mean("time") - target.mean("time")) ** 2)) / normaliser
    global_ = np.sqrt(((area_mean(prediction) - area_mean(target)) ** 2).mean("time")) / normaliser
    return {"nrmse_spatial": spatial, "nrmse_global": global_, "nrmse_total": spatial + 5 * global_}


def _ensemble_mean(x: xr.DataArray) -> xr.DataArray:
    return x.mean("member") if "member" in x.dims else x


def _leave_one_out(target: xr.DataArray) -> list[tuple[xr.DataArray, xr.DataArray]]:
    """(member k, the other members) for each k."""
    m = target.sizes["member"]
    return [(target.isel(member=k), target.isel(member=[j for j in range(m) if j != k])) for k in range(m)]


def nrmse_floor(target: xr.DataArray) -> dict[str, xr.DataArray]:
    """NRMSE of one target member against the mean of the others, averaged over members."""
    scores = [nrmse(one, rest.mean("member")) for one, rest in _leave_one_out(target)]
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}


def _single_member_chunks(x: xr.DataArray) -> xr.DataArray:
    return x.chunk({"member": -1}) if x.chunks is not None else x


def crps_fields(ensemble: xr.DataArray, obs: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Per-cell fair CRPS, skill term E|X - y| and spread term E|X - X'| (0 for M = 1), via sorted members."""
    m = ensemble.sizes["member"]
    skill = abs(ensemble - obs).mean("member")
    if m < 2:
        return skill, skill, xr.zeros_like(skill)
    ranked = xr.apply_ufunc(
        np.sort,
        _single_member_chunks(ensemble),
        input_core_dims=[["member"]],
        output_core_dims=[["member"]],
        kwargs={"axis": -1},
        dask="parallelized",
        output_dtypes=[ensemble.dtype],
    )
    coeff = xr.DataArray(2.0 * np.arange(1, m + 1) - m - 1, dims="member")
    pair_sum = 2.0 * (ranked * coeff).sum("member")  # sum over ordered pairs of |X_m - X_m'|
    spread = pair_sum / (m * (m - 1))
    return skill - spread / 2.0, skill, spread


def crps_fair(ensemble: xr.DataArray, obs: xr.DataArray) -> dict[str, xr.DataArray]:
    """Area- and time-averaged fair CRPS, skill term E|X - y| and spread term E|X - X'|."""
    crps, skill, spread = crps_fields(ensemble, obs)
    return {
        "crps": area_mean(crps).mean("time"),
        "crps_skill_term": area_mean(skill).mean("time"),
        "crps_spread_term": area_mean(spread).mean("time"),
    }


def spread_skill(ensemble: xr.DataArray, obs: xr.DataArray) -> dict[str, xr.DataArray]:
    """Spread (sqrt mean variance, ddof 1, x sqrt((M+1)/M)), ensemble-mean RMSE, and their ratio."""
    m = ensemble.sizes["member"]
    skill = np.sqrt(area_mean((ensemble.mean("member") - obs) ** 2).mean("time"))
    if m < 2:
        spread = xr.zeros_like(skill)
    else:
        spread = np.sqrt(area_mean(ensemble.var("member", ddof=1)).mean("time") * (m + 1) / m)
    return {"spread": spread, "skill_rmse": skill, "spread_skill_ratio": spread / skill}


def rank_histogram(ensemble: xr.DataArray, obs: xr.DataArray) -> xr.DataArray:
    """Area-weighted frequencies of the rank of obs among the members (0..M members below it)."""
    m = ensemble.sizes["member"]
    rank = (ensemble < obs).sum("member")
    weights = lat_weights(obs["lat"]).broadcast_like(rank).where(obs.notnull(), 0.0)
    counts = xr.concat([weights.where(rank == r, 0.0).sum() for r in range(m + 1)], dim="rank")
    return counts / counts.sum()


def ensemble_scores(ensemble: xr.DataArray, target: xr.DataArray) -> dict[str, xr.DataArray]:
    """CRPS, spread/skill and rank histogram of `ensemble` against each target member, member-averaged."""
    obs = target.rename(member="truth")
    scores = crps_fair(ensemble, obs) | spread_skill(ensemble, obs)
    averaged = {k: v.mean("truth") if "truth" in v.dims else v for k, v in scores.items()}
    return averaged | {"rank_histogram": rank_histogram(ensemble, obs)}


def ensemble_floor(target: xr.DataArray) -> dict[str, xr.DataArray]:
    """Ensemble scores of the other target members as the ensemble for each held-out member."""
    scores = []
    for one, rest in _leave_one_out(target):
        scores.append(
            crps_fair(rest, one) | spread_skill(rest, one) | {"rank_histogram": rank_histogram(rest, one)}
        )
    return {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}


def variable_scores(
    prediction: xr.DataArray, target: xr.DataArray, period: tuple[int, int] = PERIOD
) -> dict[str, xr.DataArray]:
    """Lazy scores of one variable: NRMSE of the ensemble mean, ensemble scores, and `floor_` of each.

    `prediction` has dims (time, lat, lon) or (member, time, lat, lon); `target` (member, time, lat, lon).
    """
    pred, targ = evaluation_window(prediction, period), evaluation_window(target, period)
    scores = nrmse(_ensemble_mean(pred), targ.mean("member"))
    if targ.sizes["member"] >= 2:
        scores |= {f"floor_{k}": v for k, v in nrmse_floor(targ).items()}
    ensemble = pred if "member" in pred.dims else pred.expand_dims(member=1)
    scores |= ensemble_scores(ensemble, targ)
    if targ.sizes["member"] >= 3:  # the leave-one-out ensemble needs two members for a spread
        scores |= {f"floor_{k}": v for k, v in ensemble_floor(targ).items()}
    return scores


def evaluate_climate(
    prediction: xr.Dataset, target: xr.Dataset, variables: Sequence[str], period: tuple[int, int] = PERIOD
) -> dict[str, dict[str, float | list[float]]]:
    """Compute every score of every variable in one Dask pass; values are floats (rank histogram: a list)."""
    lazy = {v: variable_scores(prediction[v], target[v], period) for v in variables}
    (computed,) = dask.compute(lazy)
    return {
        v: {k: (np.asarray(x).tolist() if np.ndim(x) else float(x)) for k, x in s.items()}
        for v, s in computed.items()
    }


def month_series(x: xr.DataArray, period: tuple[int, int] = PERIOD) -> xr.DataArray:
    """The months of `period` of a (..., time, month, ...) array as one `time` axis of months, year-major."""
    window = evaluation_window(x, period)
    return window.stack(step=("time", "month")).drop_vars(["step", "time", "month"]).rename(step="time")


def evaluate_monthly(
    prediction: xr.Dataset, target: xr.Dataset, variables: Sequence[str], period: tuple[int, int] = PERIOD
) -> dict[str, dict[str, float | list[float]]]:
    """Ensemble scores (CRPS, spread/skill, rank histogram) of monthly fields over the months of `period`, and
    `floor_` ones from the target members, in one Dask pass; both have (member, time, month, lat, lon) dims."""
    lazy = {}
    for v in variables:
        pred, targ = month_series(prediction[v], period), month_series(target[v], period)
        lazy[v] = ensemble_scores(pred, targ)
        if targ.sizes["member"] >= 3:
            lazy[v] |= {f"floor_{k}": x for k, x in ensemble_floor(targ).items()}
    (computed,) = dask.compute(lazy)
    return {
        v: {k: (np.asarray(x).tolist() if np.ndim(x) else float(x)) for k, x in s.items()}
        for v, s in computed.items()
    }


def _figure(ncols: int, width: float = 4.2, height: float = 3.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


@serialized
def plot_mean_maps(
    prediction: xr.DataArray, target: xr.DataArray, path: Path, title: str, period: tuple[int, int] = PERIOD
) -> Path:
    """PNG of emulated vs target mean over `period` (ensemble means) and their difference."""
    pred = _ensemble_mean(evaluation_window(prediction, period)).mean("time").compute()
    targ = _ensemble_mean(evaluation_window(target, period)).mean("time").compute()
    lim = float(max(abs(pred).max(), abs(targ).max()))
    diff = pred - targ
    dlim = float(abs(diff).max()) or 1.0
    extent = (float(targ.lon.min()), float(targ.lon.max()), float(targ.lat.min()), float(targ.lat.max()))
    fig, axes = _figure(3)
    panels = (("emulated", pred, lim), ("target", targ, lim), ("emulated - target", diff, dlim))
    for ax, (name, field, scale) in zip(axes, panels, strict=True):
        img = ax.imshow(
            field.transpose("lat", "lon").values,
            origin="lower" if targ.lat[0] < targ.lat[-1] else "upper",
            extent=extent,
            cmap="RdBu_r",
            vmin=-scale,
            vmax=scale,
            aspect="auto",
        )
        ax.set_title(f"{name} {period[0]}-{period[1]}")
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        fig.colorbar(img, ax=ax, shrink=0.8, label=target.attrs.get("units", ""))
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


@serialized
def plot_global_series(series: dict[str, xr.DataArray], path: Path, title: str, units: str = "") -> Path:
    """PNG of area-weighted global means over time: ensemble mean line and min-max member band per source."""
    fig, (ax,) = _figure(1, width=7.0, height=3.6)
    for name, field in series.items():
        glob = area_mean(field if "member" in field.dims else field.expand_dims(member=1)).compute()
        time = glob["time"].values
        line = ax.plot(time, glob.mean("member").values, label=name)[0]
        if glob.sizes["member"] > 1:
            ax.fill_between(
                time,
                glob.min("member").values,
                glob.max("member").values,
                color=line.get_color(),
                alpha=0.25,
                linewidth=0,
            )
    ax.set_xlabel("year")
    ax.set_ylabel(f"global mean {units}".strip())
    ax.set_title(title)
    ax.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path

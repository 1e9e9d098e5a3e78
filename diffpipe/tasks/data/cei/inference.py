"""Sampling geometries for CEI events, scoring them, and a preview plot (no Prefect, no store).

Samples are stored as an xarray Dataset: positions (event, draw, atom, xyz) in Bohr, centre of mass
at 0, in the detector frame of the momenta they were conditioned on; momenta (event, atom, xyz) are
those observed conditions (after the detector's momentum resolution); element, charge, mask,
molecule_id and event_index (into the held-out split) identify the events.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from diffusers import SchedulerMixin  # noqa: E402

from diffpipe.errors import DataError  # noqa: E402
from diffpipe.schemas import Objective  # noqa: E402
from diffpipe.schemas.cei import CeiDetector  # noqa: E402
from diffpipe.tasks.metrics.cei import cei_metrics  # noqa: E402
from diffpipe.tasks.objectives import NetFn  # noqa: E402
from diffpipe.tasks.plotting import serialized
from diffpipe.tasks.sampling import CountingNet, sample  # noqa: E402
from diffpipe.tasks.search.run import SearchRun  # noqa: E402

from .batches import condition, detected_momenta  # noqa: E402

PREVIEW_EVENTS = 4


def balanced_events(split: xr.Dataset, n_events: int) -> np.ndarray:
    """Indices of n_events events of a split, taken round-robin over its molecules (draw order within each)."""
    order = np.lexsort((split["molecule_id"].values, split["geometry_id"].values))
    return np.sort(order[:n_events])


def observed_conditions(events: xr.Dataset, detector: CeiDetector, gen: torch.Generator) -> np.ndarray:
    """Momenta (E, A, 3) as the detector reports them for held-out events (all ions detected)."""
    mask = torch.from_numpy(events["mask"].values)
    momenta = torch.from_numpy(events["momenta"].values).double()
    return detected_momenta(momenta, mask, detector, gen).float().numpy()


@torch.no_grad()
def draw_geometries(net: NetFn, objective: Objective, scheduler: SchedulerMixin | None, steps: int, draws: int,
                    batch_size: int, events: xr.Dataset, momenta: np.ndarray, scale_bohr: float,
                    gen: torch.Generator, device: torch.device,
                    autocast: Callable[[], AbstractContextManager],
                    search: SearchRun | None = None) -> tuple[np.ndarray, int]:
    """`draws` geometries per event (E, draws, A, 3) in Bohr, and the network calls per batch.

    A `net` that is a CountingNet keeps its counts for the caller; `search` draws each batch by an
    inference-time search instead of the plain scheduler loop.
    """
    counting = net if isinstance(net, CountingNet) else CountingNet(net)
    mask_all = torch.from_numpy(events["mask"].values)
    per_call = max(1, batch_size // draws)
    out, batches = [], 0
    for start in range(0, len(mask_all), per_call):
        rows = slice(start, start + per_call)
        mask = mask_all[rows].repeat_interleave(draws, 0)
        cond = condition(torch.from_numpy(events["element"].values[rows]).repeat_interleave(draws, 0),
                         torch.from_numpy(events["charge"].values[rows]).repeat_interleave(draws, 0),
                         torch.from_numpy(momenta[rows]).repeat_interleave(draws, 0), mask, device)
        with autocast():
            x = sample(counting, objective, scheduler, steps, (*mask.shape, 3), cond, gen, device, search)
        x = x.float().cpu() * scale_bohr * mask[..., None]
        out.append(x.reshape(-1, draws, *x.shape[1:]).numpy())
        batches += 1
    return np.concatenate(out), counting.calls // max(1, batches)


def samples_dataset(positions: np.ndarray, events: xr.Dataset, momenta: np.ndarray, attrs: dict) -> xr.Dataset:
    """The samples artifact's Dataset (see the module docstring)."""
    return xr.Dataset({
        "positions": (("event", "draw", "atom", "xyz"), positions.astype(np.float32), {"units": "bohr"}),
        "momenta": (("event", "atom", "xyz"), momenta.astype(np.float32), {"units": "hbar/bohr (atomic units)"}),
        "element": (("event", "atom"), events["element"].values),
        "charge": (("event", "atom"), events["charge"].values),
        "mask": (("event", "atom"), events["mask"].values),
        "molecule_id": (("event",), events["molecule_id"].values),
        "event_index": (("event",), events["event_index"].values),
    }, attrs=attrs)


def check_matching_events(samples: xr.Dataset, reference: xr.Dataset, where: str) -> None:
    """DataError naming `where` unless samples and reference hold the same atoms event by event."""
    same = (samples.sizes["event"] == reference.sizes["event"]
            and np.array_equal(samples["element"].values, reference["element"].values))
    if not same:
        raise DataError(where, "samples do not match the held-out events of the data artifact",
                        expected="samples drawn from this pipeline's data", found="different events or atoms")


def score_samples(samples: xr.Dataset, reference_positions: np.ndarray, molecule_names: list[str],
                  coverage_level: float = 0.9) -> dict:
    """CEI metrics of one draw per event (`sample`) and, with several draws, of their mean (`sample_mean`)."""
    positions = samples["positions"].values.astype(np.float64)
    common = dict(ref=reference_positions.astype(np.float64), elements=samples["element"].values.astype(np.int64),
                  charges=samples["charge"].values.astype(np.float64), mask=samples["mask"].values,
                  observed_momenta=samples["momenta"].values.astype(np.float64),
                  molecule_id=samples["molecule_id"].values, molecule_names=molecule_names)
    draws = positions.shape[1]
    several = positions.transpose(1, 0, 2, 3) if draws > 1 else None
    out = {"draws_per_event": draws, "n_events": positions.shape[0],
           "sample": cei_metrics(positions[:, 0], samples=several, coverage_level=coverage_level, **common)}
    if draws > 1:
        out["sample_mean"] = cei_metrics(positions.mean(1), **common)
    return out


def _principal_axes(points: np.ndarray) -> np.ndarray:
    """Columns: principal axes of a centred point set (largest spread first)."""
    _, axes = np.linalg.eigh(points.T @ points)
    return axes[:, ::-1]


@serialized
def preview(samples: xr.Dataset, reference_positions: np.ndarray, molecule_names: list[str], path: Path,
            title: str) -> Path:
    """Predicted (every draw, and their mean) vs true geometry for a few events of different molecules."""
    from ase.data import chemical_symbols

    molecule_id = samples["molecule_id"].values
    _, first = np.unique(molecule_id, return_index=True)
    picks = first[:PREVIEW_EVENTS]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.4), squeeze=False)
    for ax, i in zip(axes[0], picks, strict=True):
        mask = samples["mask"].values[i]
        truth = reference_positions[i][mask]
        draws = samples["positions"].values[i][:, mask]
        centre = truth.mean(0)
        frame = _principal_axes(truth - centre)[:, :2]
        for draw in draws:
            projected = (draw - draw.mean(0)) @ frame
            ax.scatter(projected[:, 0], projected[:, 1], s=6, alpha=0.35, color="tab:blue")
        mean = (draws.mean(0) - draws.mean(0).mean(0)) @ frame
        ax.scatter(mean[:, 0], mean[:, 1], marker="x", color="tab:red", s=40, label="sample mean")
        true2d = (truth - centre) @ frame
        ax.scatter(true2d[:, 0], true2d[:, 1], s=90, facecolors="none", edgecolors="k", label="true")
        for (px, py), z in zip(true2d, samples["element"].values[i][mask], strict=True):
            ax.annotate(chemical_symbols[int(z)], (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(molecule_names[int(molecule_id[i])], fontsize=8)
        ax.set_xlabel("Bohr (principal axes of the true geometry)", fontsize=6)
        ax.set_aspect("equal", "datalim")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def metrics_table(scores: dict) -> str:
    """A markdown table of the overall metrics per estimator."""
    estimators = [name for name in ("sample", "sample_mean") if name in scores]
    names = list(scores["sample"]["overall"])
    rows = [f"| {name} | " + " | ".join(f"{scores[e]['overall'].get(name, float('nan')):.4g}" for e in estimators)
            + " |" for name in names]
    return (f"| metric | {' | '.join(estimators)} |\n|---|{'---|' * len(estimators)}\n" + "\n".join(rows))

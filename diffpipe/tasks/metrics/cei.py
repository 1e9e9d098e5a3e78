"""Coulomb explosion imaging metrics: geometry errors in Bohr, physics round trip, calibration, aggregation.

Conventions (numpy, float64, one event at a time or batched with a padding mask):
- Every geometry is first centred at the unweighted centroid of its real atoms.
- `mae_kabsch_bohr`: mean over real atoms and the 3 Cartesian components of |pred - ref| after the
  proper rotation (no reflection) that minimises the RMSD (Kabsch) is applied to pred.
- `mae_frame_bohr`: the same without rotation, i.e. in the frame the coordinates are given in (our
  model predicts in the detector frame of the momenta; this is the analogue of MOLEXA's
  momentum-frame MAE, the anchor's 0.536 Bohr).
- `rmsd_bohr`: sqrt(mean over atoms of |pred - ref|^2) after Kabsch.
- `distance_mae_bohr`: mean over atom pairs i < j of |d_ij(pred) - d_ij(ref)| (E(3) invariant).
- Unlabelled references: identical elements are matched with the Hungarian algorithm (`match_atoms`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from diffpipe.errors import DataError
from diffpipe.tasks.data.cei.charges import masses_from_atomic_numbers
from diffpipe.tasks.data.cei.forward import simulate_explosion

GEOMETRY_METRICS = ("mae_kabsch_bohr", "mae_frame_bohr", "rmsd_bohr", "distance_mae_bohr")


def _centred(x: np.ndarray) -> np.ndarray:
    """Geometry (n, 3) shifted to its centroid."""
    return x - x.mean(0)


def kabsch_rotation(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Proper rotation R (3, 3) minimising |pred_c R^T - ref_c| for centred copies of (n, 3) geometries."""
    h = _centred(pred).T @ _centred(ref)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def kabsch_align(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """pred (n, 3) centred and rotated onto the centred ref (n, 3)."""
    return _centred(pred) @ kabsch_rotation(pred, ref).T


def geometry_errors(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Kabsch MAE, frame MAE, Kabsch RMSD and interatomic-distance MAE (Bohr) of one geometry pair (n, 3)."""
    aligned, ref_c = kabsch_align(pred, ref), _centred(ref)
    upper = np.triu_indices(len(ref), k=1)
    d_pred = np.linalg.norm(pred[:, None] - pred[None], axis=-1)[upper]
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)[upper]
    return {
        "mae_kabsch_bohr": float(np.abs(aligned - ref_c).mean()),
        "mae_frame_bohr": float(np.abs(_centred(pred) - ref_c).mean()),
        "rmsd_bohr": float(np.sqrt(((aligned - ref_c) ** 2).sum(-1).mean())),
        "distance_mae_bohr": float(np.abs(d_pred - d_ref).mean()) if len(d_ref) else 0.0,
    }


def _hungarian_by_element(pred: np.ndarray, ref: np.ndarray, pred_elements: np.ndarray,
                          ref_elements: np.ndarray) -> np.ndarray:
    """Permutation perm with pred[perm] matched to ref, solving one assignment per element on distances."""
    perm = np.empty(len(ref), dtype=np.int64)
    for element in np.unique(ref_elements):
        in_ref, in_pred = np.flatnonzero(ref_elements == element), np.flatnonzero(pred_elements == element)
        cost = np.linalg.norm(ref[in_ref][:, None] - pred[in_pred][None], axis=-1)
        rows, cols = linear_sum_assignment(cost)
        perm[in_ref[rows]] = in_pred[cols]
    return perm


def _initial_orientations(pred: np.ndarray, ref: np.ndarray) -> list[np.ndarray]:
    """pred rotated onto ref's principal axes with the 4 proper sign choices (starting points)."""
    _, pred_axes = np.linalg.eigh(_centred(pred).T @ _centred(pred))
    _, ref_axes = np.linalg.eigh(_centred(ref).T @ _centred(ref))
    starts = []
    for signs in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]):
        rotation = ref_axes @ np.diag(signs) @ pred_axes.T
        if np.linalg.det(rotation) < 0:
            rotation = ref_axes @ np.diag(signs) @ np.diag([1, 1, -1]) @ pred_axes.T
        starts.append(_centred(pred) @ rotation.T)
    return starts


def match_atoms(pred: np.ndarray, ref: np.ndarray, pred_elements: np.ndarray, ref_elements: np.ndarray,
                iterations: int = 20) -> np.ndarray:
    """Permutation perm of pred's atoms (within identical elements) so that pred[perm] matches unlabelled ref.

    Alternates Hungarian assignment (per element, on distances) and Kabsch alignment, from the given
    order and from the 4 principal-axes orientations; keeps the lowest RMSD. Exact (zero error) for
    rotated and permuted copies whenever one start lands in the right basin. DataError if the two
    geometries do not hold the same atoms.
    """
    if sorted(pred_elements.tolist()) != sorted(ref_elements.tolist()):
        raise DataError("reference geometry", "prediction and reference hold different atoms",
                        expected=str(sorted(ref_elements.tolist())),
                        found=str(sorted(pred_elements.tolist())))
    ref_c = _centred(ref)
    best_perm, best_rmsd = np.arange(len(ref)), np.inf
    for start in [_centred(pred), *_initial_orientations(pred, ref)]:
        perm = _hungarian_by_element(start, ref_c, pred_elements, ref_elements)
        for _ in range(iterations):
            aligned = kabsch_align(pred[perm], ref)
            new_perm = _hungarian_by_element(aligned, ref_c, ref_elements, ref_elements)
            if np.array_equal(new_perm, np.arange(len(ref))):
                break
            perm = perm[new_perm]
        rmsd = np.sqrt(((kabsch_align(pred[perm], ref) - ref_c) ** 2).sum(-1).mean())
        if rmsd < best_rmsd - 1e-12:
            best_perm, best_rmsd = perm, rmsd
    return best_perm


def event_geometry_errors(pred: np.ndarray, ref: np.ndarray, elements: np.ndarray, mask: np.ndarray,
                          ref_elements: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-event geometry errors (each (B,)) for padded batches pred, ref (B, A, 3) sharing `mask`.

    `ref_elements` (B, A) given: the reference is unlabelled (its own atom order, same atoms per event),
    and pred's atoms are matched to it with `match_atoms` first.
    """
    rows = []
    for i, (p, r, m) in enumerate(zip(pred, ref, mask, strict=True)):
        p, r = p[m], r[m]
        if ref_elements is not None:
            p = p[match_atoms(p, r, elements[i][m], ref_elements[i][m])]
        rows.append(geometry_errors(p, r))
    return {name: np.array([row[name] for row in rows]) for name in GEOMETRY_METRICS}


def momentum_round_trip(pred: np.ndarray, charges: np.ndarray, elements: np.ndarray, mask: np.ndarray,
                        observed_momenta: np.ndarray, momentum_rtol: float = 1e-4) -> np.ndarray:
    """Relative momentum error per event (B,): ||p_sim(pred) - p_obs|| / ||p_obs|| (Frobenius, no alignment).

    Re-simulates the predicted geometries (B, A, 3) Bohr with the same charges and the same forward
    model. No rotation is fitted: predictions are expected in the detector frame of the momenta.
    """
    masses = masses_from_atomic_numbers(elements)
    result = simulate_explosion(torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(charges),
                                torch.as_tensor(masses), torch.as_tensor(mask), momentum_rtol=momentum_rtol)
    simulated = result.momenta.numpy()
    weight = mask[..., None]
    error = np.sqrt((((simulated - observed_momenta) * weight) ** 2).sum((1, 2)))
    return error / np.sqrt(((observed_momenta * weight) ** 2).sum((1, 2)))


def interval_coverage(samples: np.ndarray, ref: np.ndarray, mask: np.ndarray,
                      level: float = 0.9) -> np.ndarray:
    """Per-event share of real coordinates inside the central `level` interval of the samples (S, B, A, 3).

    Samples and reference are centred at their centroids and not rotated (same frame assumed).
    A calibrated model covers `level` of the coordinates on average.
    """
    weight = mask[None, ..., None]
    count = mask.sum(1)[None, :, None, None]
    centred_samples = samples - (samples * weight).sum(2, keepdims=True) / count
    centred_ref = ref - (ref * mask[..., None]).sum(1, keepdims=True) / count[0]
    low, high = np.quantile(centred_samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
    inside = (centred_ref >= low) & (centred_ref <= high)
    return (inside * mask[..., None]).sum((1, 2)) / (3 * mask.sum(1))


def aggregate_by_molecule(per_event: dict[str, np.ndarray], molecule_id: np.ndarray,
                          molecule_names: list[str]) -> dict:
    """{'overall': {metric: mean over events}, 'per_molecule': {name: {metric: mean, 'n_events': n}}}."""
    overall = {name: float(np.mean(values)) for name, values in per_event.items()}
    overall["n_events"] = len(molecule_id)
    per_molecule = {}
    for mol in np.unique(molecule_id):
        rows = molecule_id == mol
        entry = {name: float(np.mean(values[rows])) for name, values in per_event.items()}
        entry["n_events"] = int(rows.sum())
        per_molecule[molecule_names[int(mol)]] = entry
    return {"overall": overall, "per_molecule": per_molecule}


def cei_metrics(pred: np.ndarray, ref: np.ndarray, elements: np.ndarray, charges: np.ndarray,
                mask: np.ndarray, observed_momenta: np.ndarray, molecule_id: np.ndarray,
                molecule_names: list[str], samples: np.ndarray | None = None,
                ref_elements: np.ndarray | None = None,
                coverage_level: float = 0.9, round_trip: bool = True) -> dict:
    """All CEI metrics for point predictions pred (B, A, 3) (e.g. one sample or the sample mean), per molecule
    and overall; `samples` (S, B, A, 3) adds `coverage_<level>`; `round_trip` adds `momentum_rel_error`;
    `ref_elements` marks an unlabelled reference (see `event_geometry_errors`)."""
    per_event = event_geometry_errors(pred, ref, elements, mask, ref_elements)
    if round_trip:
        per_event["momentum_rel_error"] = momentum_round_trip(pred, charges, elements, mask, observed_momenta)
    if samples is not None:
        per_event[f"coverage_{coverage_level:g}"] = interval_coverage(samples, ref, mask, coverage_level)
    return aggregate_by_molecule(per_event, molecule_id, molecule_names)

"""Forward-model throughput: batched torch Coulomb explosions vs per-event solve_ivp at the same accuracy.

Events: displaced G2 molecules (2-9 atoms, X-ray charges) integrated to t = 2e5 a.u. (4.8 ps). The
accuracy of both is measured against DOP853 at rtol 1e-12; solve_ivp gets the loosest rtol whose worst
error is no larger than the torch integrator's. Writes benchmarks/results/cei_forward.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from diffpipe.tasks.data.cei.charges import masses_from_atomic_numbers, sample_charges
from diffpipe.tasks.data.cei.forward import simulate_explosion, solve_ivp_momenta
from diffpipe.tasks.data.cei.geometry import DEFAULT_ELEMENTS, g2_molecules

T_END_AU = 2e5
N_EVENTS = 1024
N_REFERENCE = 12


def make_events(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Padded positions, charges, masses, mask for N_EVENTS displaced G2 molecules."""
    molecules = g2_molecules(2, 9, DEFAULT_ELEMENTS)
    positions, charges = np.zeros((N_EVENTS, 9, 3)), np.zeros((N_EVENTS, 9))
    elements = np.zeros((N_EVENTS, 9), dtype=np.int64)
    for i in range(N_EVENTS):
        molecule = molecules[rng.integers(len(molecules))]
        k = len(molecule.symbols)
        positions[i, :k] = molecule.positions + rng.normal(0.0, 0.1, (k, 3))
        charges[i, :k] = sample_charges(list(molecule.symbols), "xray", 1, rng)[0]
        elements[i, :k] = molecule.atomic_numbers
    return positions, charges, masses_from_atomic_numbers(elements), elements > 0


def solve_one(positions: np.ndarray, charges: np.ndarray, masses: np.ndarray, rtol: float) -> np.ndarray:
    """Final momenta of one unpadded event with scipy's DOP853."""
    return solve_ivp_momenta(positions, charges, masses, T_END_AU, rtol=rtol, atol=rtol * 1e-2)


def relative_error(momenta: np.ndarray, reference: np.ndarray) -> float:
    """||p - p_ref|| / ||p_ref||."""
    return float(np.linalg.norm(momenta.ravel() - reference.ravel()) / np.linalg.norm(reference))


def main() -> None:
    """Time both integrators and write the ratio."""
    torch.set_num_threads(1)
    positions, charges, masses, mask = make_events(np.random.default_rng(0))
    events = [(positions[i, m], charges[i, m], masses[i, m]) for i, m in enumerate(mask[:N_REFERENCE])]
    references = [solve_one(*event, rtol=1e-12) for event in events]
    started = time.perf_counter()
    result = simulate_explosion(torch.tensor(positions), torch.tensor(charges), torch.tensor(masses),
                                torch.tensor(mask), t_end_au=T_END_AU)
    torch_seconds = time.perf_counter() - started
    torch_error = max(relative_error(result.momenta[i, mask[i]].numpy(), references[i])
                      for i in range(N_REFERENCE))
    chosen = None
    for rtol in (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10):
        started = time.perf_counter()
        solved = [solve_one(*event, rtol=rtol) for event in events]
        seconds = time.perf_counter() - started
        error = max(relative_error(s, r) for s, r in zip(solved, references, strict=True))
        if error <= torch_error:
            chosen = {"rtol": rtol, "max_rel_error": error, "events_per_s": N_REFERENCE / seconds}
            break
    torch_rate = N_EVENTS / torch_seconds
    results = {
        "t_end_au": T_END_AU, "torch_threads": 1, "torch_events": N_EVENTS, "torch_seconds": torch_seconds,
        "torch_events_per_s": torch_rate, "torch_max_rel_error": torch_error,
        "torch_force_evaluations": result.force_evaluations, "solve_ivp": chosen,
        "speedup_torch_over_solve_ivp": torch_rate / chosen["events_per_s"] if chosen else None,
    }
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results" / "cei_forward.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

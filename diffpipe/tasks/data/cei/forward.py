"""Classical point-charge Coulomb explosion in atomic units, batched over events in torch.

    m_k d^2 r_k/dt^2 = sum_{l != k} q_k q_l (r_k - r_l) / |r_k - r_l|^3      (Coulomb constant 1)

Events are padded to a common number of atoms; padding atoms have charge 0 (no force) and mass 1.

Integrator (the choice, and why): classical RK4 on a shared logarithmic time grid
t(s) = tau (exp(s) - 1) with uniform steps in s (`steps_per_decade` per factor 10 in t + tau).
tau is the batch's fastest pair time scale sqrt(mu r^3 / (q_i q_j)), so the first steps resolve the
initial push and later steps grow with t: a Coulomb explosion becomes self-similar (r ~ t), its
dynamical time grows like t, so a constant step in log t keeps the per-step error roughly constant.
One grid for the whole batch keeps every step a handful of dense tensor operations (no per-event
step-size control, no rejected steps). Without a fixed `t_end`, integration continues decade by
decade until, for every event, the momenta changed by less than `momentum_rtol` (relative, Frobenius
norm) over the last decade. The remaining potential energy decays like 1/t, so the error left is
about momentum_rtol / 9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

LN10 = math.log(10.0)


@dataclass(frozen=True)
class ExplosionResult:
    """Final state of a batch of explosions: momenta and positions (B, A, 3), final time, per-event flags."""

    momenta: torch.Tensor
    positions: torch.Tensor
    time_au: float
    converged: torch.Tensor
    force_evaluations: int


def _pairs(n_atoms: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index vectors (i, j) of the atom pairs i < j."""
    first, second = torch.triu_indices(n_atoms, n_atoms, 1, device=device)
    return first, second


def _pair_charges(charges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q_i q_j for the pairs i < j (B, P), zero where either atom is padding."""
    q = charges * mask
    first, second = _pairs(q.shape[1], q.device)
    return q[:, first] * q[:, second]


def _pair_vectors(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r_i - r_j (B, P, 3) and |r_i - r_j|^2 (B, P) for pairs i < j; coincident (padding) pairs get 1."""
    first, second = _pairs(positions.shape[1], positions.device)
    diff = positions[:, first] - positions[:, second]
    dist2 = (diff * diff).sum(-1)
    return diff, torch.where(dist2 > 0, dist2, torch.ones_like(dist2))


def coulomb_forces(positions: torch.Tensor, pair_charges: torch.Tensor) -> torch.Tensor:
    """Coulomb force on every atom (B, A, 3) in Hartree/Bohr from positions and pair charges (B, P)."""
    first, second = _pairs(positions.shape[1], positions.device)
    diff, dist2 = _pair_vectors(positions)
    pair_force = (pair_charges * dist2.rsqrt() / dist2)[..., None] * diff
    forces = torch.zeros_like(positions)
    forces.index_add_(1, first, pair_force)
    return forces.index_add_(1, second, -pair_force)


def potential_energy(positions: torch.Tensor, charges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Coulomb potential energy per event (B,) in Hartree."""
    _, dist2 = _pair_vectors(positions)
    return (_pair_charges(charges, mask) * dist2.rsqrt()).sum(1)


def kinetic_energy(momenta: torch.Tensor, masses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Kinetic energy per event (B,) in Hartree."""
    return ((momenta * momenta).sum(-1) / (2.0 * masses) * mask).sum(1)


def explosion_time_scale(positions: torch.Tensor, charges: torch.Tensor, masses: torch.Tensor,
                         mask: torch.Tensor) -> float:
    """Fastest pair time scale sqrt(mu r^3 / (q_i q_j)) in the batch (atomic time units)."""
    first, second = _pairs(positions.shape[1], positions.device)
    qq = _pair_charges(charges, mask)
    _, dist2 = _pair_vectors(positions)
    mu = masses[:, first] * masses[:, second] / (masses[:, first] + masses[:, second])
    scale = torch.where(qq > 0, (mu * dist2 ** 1.5 / qq.clamp_min(1e-30)).sqrt(), torch.inf)
    return float(scale.min()) if scale.numel() else math.inf


def _rk4_step(r: torch.Tensor, p: torch.Tensor, h: float, inv_mass: torch.Tensor,
              qq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One classical Runge-Kutta step of (dr/dt = p/m, dp/dt = F(r)) with step h."""
    k1r, k1p = p * inv_mass, coulomb_forces(r, qq)
    k2r, k2p = (p + 0.5 * h * k1p) * inv_mass, coulomb_forces(r + 0.5 * h * k1r, qq)
    k3r, k3p = (p + 0.5 * h * k2p) * inv_mass, coulomb_forces(r + 0.5 * h * k2r, qq)
    k4r, k4p = (p + h * k3p) * inv_mass, coulomb_forces(r + h * k3r, qq)
    r = r + (h / 6.0) * (k1r + 2.0 * k2r + 2.0 * k3r + k4r)
    p = p + (h / 6.0) * (k1p + 2.0 * k2p + 2.0 * k3p + k4p)
    return r, p


def _integrate(r: torch.Tensor, p: torch.Tensor, s_from: float, s_to: float, n_steps: int, tau: float,
               inv_mass: torch.Tensor, qq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RK4 over n_steps uniform steps in s from s_from to s_to, where t = tau (exp(s) - 1)."""
    for k in range(n_steps):
        s0 = s_from + (s_to - s_from) * k / n_steps
        s1 = s_from + (s_to - s_from) * (k + 1) / n_steps
        r, p = _rk4_step(r, p, tau * (math.exp(s1) - math.exp(s0)), inv_mass, qq)
    return r, p


def simulate_explosion(positions: torch.Tensor, charges: torch.Tensor, masses: torch.Tensor,
                       mask: torch.Tensor | None = None, *, t_end_au: float | None = None,
                       momentum_rtol: float = 1e-4, max_time_au: float = 1e9, steps_per_decade: int = 32,
                       initial_momenta: torch.Tensor | None = None,
                       dtype: torch.dtype = torch.float64) -> ExplosionResult:
    """Explode a batch: positions (B, A, 3) Bohr, charges (B, A) e, masses (B, A) m_e, mask (B, A) bool.

    With `t_end_au` the integration stops there; otherwise it runs decade by decade until every event's
    momenta changed by less than `momentum_rtol` over one decade (or `max_time_au` is reached).
    Returns final momenta (hbar/Bohr) and positions (Bohr) in `dtype`.
    """
    device = positions.device
    r = positions.to(dtype)
    m = mask.to(dtype) if mask is not None else torch.ones(r.shape[:2], dtype=dtype, device=device)
    q = charges.to(dtype) * m
    inv_mass = (1.0 / torch.where(m > 0, masses.to(dtype), torch.ones_like(m)))[..., None]
    p = torch.zeros_like(r) if initial_momenta is None else initial_momenta.to(dtype) * m[..., None]
    qq = _pair_charges(q, m)
    tau = explosion_time_scale(r, q, 1.0 / inv_mass[..., 0], m)
    if not math.isfinite(tau):
        return ExplosionResult(p, r, 0.0, torch.ones(r.shape[0], dtype=torch.bool, device=device), 0)
    ds = LN10 / steps_per_decade
    if t_end_au is not None:
        s_end = math.log1p(t_end_au / tau)
        n_steps = max(1, math.ceil(s_end / ds))
        r, p = _integrate(r, p, 0.0, s_end, n_steps, tau, inv_mass, qq)
        converged = torch.ones(r.shape[0], dtype=torch.bool, device=device)
        return ExplosionResult(p, r, t_end_au, converged, 4 * n_steps)
    s, s_max, evaluations = 0.0, math.log1p(max_time_au / tau), 0
    converged = torch.zeros(r.shape[0], dtype=torch.bool, device=device)
    while not bool(converged.all()) and s < s_max:
        s_next = min(s + LN10, s_max)
        n_steps = max(1, math.ceil((s_next - s) / ds))
        p_before = p
        r, p = _integrate(r, p, s, s_next, n_steps, tau, inv_mass, qq)
        change = (p - p_before).flatten(1).norm(dim=1) / p.flatten(1).norm(dim=1).clamp_min(1e-300)
        converged = change < momentum_rtol
        s, evaluations = s_next, evaluations + 4 * n_steps
    return ExplosionResult(p, r, tau * math.expm1(s), converged, evaluations)


def solve_ivp_momenta(positions: np.ndarray, charges: np.ndarray, masses: np.ndarray, t_end_au: float,
                      rtol: float, atol: float) -> np.ndarray:
    """Final momenta (n, 3) of one unpadded event from scipy's DOP853: the per-event reference integrator."""
    n = len(charges)
    pair = np.outer(charges, charges) * (1 - np.eye(n))

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        r, p = y[: 3 * n].reshape(n, 3), y[3 * n:].reshape(n, 3)
        diff = r[:, None] - r[None]
        dist = np.linalg.norm(diff, axis=-1) + np.eye(n)
        force = ((pair / dist**3)[..., None] * diff).sum(1)
        return np.concatenate([(p / masses[:, None]).ravel(), force.ravel()])

    y0 = np.concatenate([positions.ravel(), np.zeros(3 * n)])
    solution = solve_ivp(rhs, (0.0, t_end_au), y0, method="DOP853", rtol=rtol, atol=atol)
    return solution.y[3 * n:, -1].reshape(n, 3)

"""Ground truth by MCMC: independent chains as Dask tasks (a LocalCluster or a given scheduler), split R-hat.

Continuous targets use random-walk Metropolis; lattices use checkerboard Metropolis sweeps. Each chain task
rebuilds its target from the spec, so only specs and seeds cross process boundaries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffpipe.schemas.targets import EnergyData

from ..context import ProgressBars, no_progress
from ..dask_cluster import dask_client
from ..dask_progress import gather


def run_chain(data: dict[str, Any], chain: int) -> tuple[np.ndarray, np.ndarray]:
    """One chain task: (walkers, draws, dim) kept states and (walkers, draws) log densities."""
    from . import make_target

    torch.set_num_threads(1)
    spec = EnergyData.model_validate(data)
    mc, target = spec.mcmc, make_target(spec.target)
    gen = torch.Generator().manual_seed(spec.seed * 100_003 + chain)
    n = mc.walkers_per_chain
    if target.discrete:
        state = torch.randint(0, target.num_states, (n, target.size, target.size), generator=gen)
        step = lambda s: target.metropolis_sweep(s, gen)  # noqa: E731
        flat = lambda s: s.reshape(n, -1)  # noqa: E731
    else:
        state = 2.0 * torch.randn(n, target.dim, generator=gen, dtype=torch.float64)
        logp = target.log_prob(state)

        def step(s: torch.Tensor) -> torch.Tensor:
            nonlocal logp
            proposal = s + mc.step_size * torch.randn(s.shape, generator=gen, dtype=torch.float64)
            new = target.log_prob(proposal)
            accept = torch.rand(n, generator=gen, dtype=torch.float64).log() < new - logp
            logp = torch.where(accept, new, logp)
            return torch.where(accept[:, None], proposal, s)

        flat = lambda s: s  # noqa: E731
    for _ in range(mc.burn_in):
        state = step(state)
    kept, logps = [], []
    for sweep in range(mc.sweeps):
        state = step(state)
        if (sweep + 1) % mc.thin == 0:
            kept.append(flat(state).clone())
            logps.append(target.log_prob(flat(state)))
    return torch.stack(kept, 1).numpy(), torch.stack(logps, 1).double().numpy()


def split_rhat(trace: np.ndarray) -> float:
    """Split R-hat (Gelman et al.) of a (chains, draws) trace: each chain is split in two halves."""
    half = trace.shape[1] // 2
    chains = np.concatenate([trace[:, :half], trace[:, half: 2 * half]], axis=0)
    n = chains.shape[1]
    within = chains.var(axis=1, ddof=1).mean()
    between = n * chains.mean(axis=1).var(ddof=1)
    if within == 0:
        return 1.0
    return float(np.sqrt(((n - 1) / n * within + between / n) / within))


def run_chains(spec: EnergyData, address: str | None, workers: int,
               bars: ProgressBars = no_progress) -> tuple[np.ndarray, np.ndarray]:
    """All chains in parallel on Dask: states (walkers, draws, dim) and log densities (walkers, draws); `bars`
    shows the chains as they finish."""
    data = spec.model_dump(mode="json")
    with dask_client(address, max(1, workers)) as client, bars("MCMC chains", spec.mcmc.chains) as advance:
        futures = client.map(run_chain, [data] * spec.mcmc.chains, range(spec.mcmc.chains), pure=False)
        results = gather(client, futures, advance)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])

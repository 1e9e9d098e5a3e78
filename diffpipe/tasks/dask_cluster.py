"""The Dask client a stage computes on: the scheduler at `runtime.dask_address`, or a LocalCluster of its own.

Clients are never made the process's default (`set_as_default=False`): stages run concurrently in threads of
one process, and a default client is process-wide state. Two overlapping default clients leave dask's global
`scheduler` setting at "dask.distributed" with no client behind it once both close (each restores the setting
it found when it opened), so every later `dask.compute` in the process fails. Work that should run on the
cluster is handed the client explicitly (`client.map`, `dask_progress.compute(..., client=client)`); anything
else computes on local threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# imported with the module, not on first use: distributed sets up its loggers when first imported, which
# would undo the CLI's quieting of them (flows/quiet.py) after it ran
from distributed import Client, LocalCluster


@contextmanager
def dask_client(address: str | None, workers: int) -> Iterator[Any]:
    """A client of the scheduler at `address`, of a fresh LocalCluster of `workers` single-threaded processes,
    or None (no address and `workers == 0`: compute on local threads)."""
    if address:
        with Client(address, set_as_default=False) as client:
            yield client
    elif workers > 0:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster, set_as_default=False) as client:
            yield client
    else:
        yield None

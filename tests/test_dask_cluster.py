"""Stages that open Dask clients at overlapping times in one process (concurrent sweep cells building their
data) leave dask able to compute: no client is the process default, so none restores a stale setting."""

from __future__ import annotations

import dask
import dask.array as da

from diffpipe.tasks.context import no_progress
from diffpipe.tasks.dask_cluster import dask_client
from diffpipe.tasks.dask_progress import compute


def test_overlapping_clients_compute_on_their_own_cluster_and_leave_dask_usable() -> None:
    first, second = dask_client(None, 1), dask_client(None, 1)
    one = first.__enter__()
    two = second.__enter__()
    first.__exit__(None, None, None)  # the first stage ends while the second still computes
    (total,) = compute(da.ones(10, chunks=5).sum(), bars=no_progress, what="sum", client=two)
    assert int(total) == 10 and one.status == "closed"
    second.__exit__(None, None, None)
    # with default clients, the second's close restored scheduler="dask.distributed" with no client behind it
    assert dask.config.get("scheduler", None) is None
    assert int(dask.compute(da.ones(4, chunks=2).sum())[0]) == 4
    with dask_client(None, 0) as none:
        assert none is None

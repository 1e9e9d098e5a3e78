"""Progress of Dask work on a stage's progress bar: graphs on a local and on a distributed scheduler, futures.

(A data build's and an evaluation's bars reaching the Prefect API and the terminal: test_pipeline_cache.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import dask
import pytest
from distributed import Client, LocalCluster
from helpers import RecordedBars

from diffpipe.tasks.dask_progress import compute, gather


def _graph(n: int) -> list:
    """n independent sums feeding one total: n + 1 tasks beside the inputs."""
    parts = [dask.delayed(sum)([i, i]) for i in range(n)]
    return [dask.delayed(sum)(parts)]


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """A real scheduler with two in-process single-threaded workers."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def test_compute_counts_every_task_of_a_local_graph() -> None:
    bars = RecordedBars()
    (total,) = compute(*_graph(20), bars=bars, what="tasks", scheduler="threads")
    assert total == sum(2 * i for i in range(20))
    assert sum(bars.advances["tasks"]) == bars.totals["tasks"] >= 21 and min(bars.advances["tasks"]) > 0


def test_compute_follows_the_distributed_scheduler(client: Client) -> None:
    bars = RecordedBars()
    (total,) = compute(*_graph(30), bars=bars, what="tasks")
    assert total == sum(2 * i for i in range(30))
    assert sum(bars.advances["tasks"]) == bars.totals["tasks"] >= 31


def test_gather_advances_by_weight_and_raises_a_failed_future(client: Client) -> None:
    advances: list[int] = []
    futures = client.map(lambda x: x * x, range(5), pure=False)
    assert gather(client, futures, advances.append, [1, 2, 3, 4, 5]) == [0, 1, 4, 9, 16]
    assert sorted(advances) == [1, 2, 3, 4, 5]
    failing = client.map(lambda x: 1 // x, [1, 0], pure=False)
    with pytest.raises(ZeroDivisionError):
        gather(client, failing, lambda n: None)


"""Progress of Dask work on a stage's progress bar (`StageContext.progress_bar`, terminal and Prefect UI).

Two kinds of Dask work run inside stages:

- futures of a distributed client (`client.map`: CEI chunks, MCMC chains): `gather` advances the bar by
  each future's weight as it finishes, in the order they finish;
- task graphs (`dask.compute` of delayed zarr writes: the climate store): `compute` counts the graph's
  finished tasks. On a distributed client the counts come from the scheduler's own `Progress` plugin,
  read through distributed's `ProgressBar` feed (what `distributed.progress` draws); on a local scheduler
  from `dask.callbacks.Callback`. The bar is opened when the first count arrives, since the number of
  tasks is known only then, and it is always advanced from the calling thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import dask
from dask.callbacks import Callback

from .context import ProgressBars

POLL_S = 0.2
"""How often the calling thread moves the bar to the scheduler's latest count."""


def gather(client: Any, futures: Sequence[Any], advance: Callable[[int], None],
           weights: Sequence[int] | None = None) -> list[Any]:
    """The results of `futures` in their order, calling `advance(weight)` as each finishes; a failed future's
    error is raised as soon as it arrives."""
    from distributed import as_completed

    weight = dict(zip((f.key for f in futures), weights or [1] * len(futures), strict=True))
    for future in as_completed(futures, loop=client.loop):
        if future.status == "error":
            future.result()
        advance(weight[future.key])
    return client.gather(list(futures))


def compute(*collections: Any, bars: ProgressBars, what: str, scheduler: str | None = None,
            client: Any = None) -> tuple[Any, ...]:
    """`dask.compute(*collections)` with a progress bar over the graph's tasks, named `what`: on `client` (a
    distributed client) when given, else on the default client or local scheduler dask would use."""
    with _task_counts(bars, what) as report:
        client = client if client is not None else _distributed_client(scheduler)
        if client is None:
            with _LocalCounts(report):
                return dask.compute(*collections, scheduler=scheduler)
        futures = client.compute(list(collections))
        _follow_scheduler(client, futures, report)
        return tuple(client.gather(futures))


@contextmanager
def _task_counts(bars: ProgressBars, what: str) -> Iterator[Callable[[int, int], None]]:
    """`report(done, total)`: opens the bar at the first report with a total, then advances it to `done`."""
    with ExitStack() as stack:
        advance: Callable[[int], None] | None = None
        shown = 0

        def report(done: int, total: int) -> None:
            nonlocal advance, shown
            if advance is None and total > 0:
                advance = stack.enter_context(bars(what, total))
            if advance is not None and done > shown:
                advance(done - shown)
                shown = done

        yield report


def _distributed_client(scheduler: str | None) -> Any:
    """The distributed client `dask.compute` would use, or None for a local scheduler."""
    if scheduler is not None or dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


class _LocalCounts(Callback):
    """Finished tasks of a local scheduler's run (its callbacks run in the calling thread)."""

    def __init__(self, report: Callable[[int, int], None]):
        super().__init__()
        self.report, self.total = report, 0

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        done = len(state["finished"])
        self.total = done + sum(len(state[k]) for k in ("ready", "waiting", "running"))
        self.report(done, self.total)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        self.report(len(state["finished"]), self.total)


def _follow_scheduler(client: Any, futures: list[Any], report: Callable[[int, int], None]) -> None:
    """Report the scheduler's counts of the futures' graph until it finishes or fails."""
    from distributed.diagnostics.progressbar import ProgressBar

    class Feed(ProgressBar):
        """distributed's progress feed keeping only the latest (done, total)."""

        counts = (0, 0)

        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:  # noqa: A002 - distributed's name
            self.counts = (all - remaining, all)

    feed = Feed(futures, scheduler=client.scheduler.address, interval=f"{POLL_S}s")
    listening = asyncio.run_coroutine_threadsafe(feed.listen(), client.loop.asyncio_loop)
    while not listening.done():
        time.sleep(POLL_S)
        report(*feed.counts)
    report(*feed.counts)

"""Helpers shared by test modules (fixtures built on them live in conftest.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordedBars:
    """`ProgressBars` (diffpipe/tasks/context.py) that record each bar's total and advances."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.advances: dict[str, list[int]] = {}

    @contextmanager
    def __call__(self, what: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar over `total` units of `what`."""
        self.totals[what], self.advances[what] = total, []
        yield self.advances[what].append

    def done(self, what: str) -> int:
        """Units of `what` advanced so far."""
        return sum(self.advances[what])

"""Helpers shared by test modules (fixtures built on them live in conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def api_server(command: list[str], env: dict[str, str], log_path: Path, api: str, cwd: Path | None = None,
               timeout: float = 180) -> Iterator[subprocess.Popen]:
    """Start a Prefect API server process (`command`), wait until `api`/health answers, and stop its process
    group on exit; the server's output goes to `log_path`, whose tail a failed start reports."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"server did not start in {timeout} s"
                time.sleep(0.5)
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


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

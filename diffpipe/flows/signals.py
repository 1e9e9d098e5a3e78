"""SIGTERM, SIGINT and a deployment's timeout stop a run within seconds: stages checkpoint at their next step.

The first signal asks every stage to stop (`tasks.stopping`); training loops save a checkpoint and raise
`Interrupted`, and loops with a progress bar (sampling, ...) raise it at their next unit, publishing nothing.
Outside a stage the run stops at once. If the run is still alive `FORCE_AFTER_S` later, the main thread is
interrupted; `EXIT_AFTER_S` later the process exits (the watchdog ends its children).
A second signal stops at once.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from diffpipe.tasks.stopping import request_stop, stop_requested

FORCE_AFTER_S = 10.0
EXIT_AFTER_S = 20.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stages_running = 0
_count_lock = threading.Lock()


def _on_signal(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if stop_requested() or not _stages_running:
        request_stop(name)
        raise KeyboardInterrupt(name)
    print(f"{name}: stopping at the next step; training saves a checkpoint (send it again to stop now)",
          file=sys.stderr, flush=True)
    _stop_soon(name, 128 + signum)


def _stop_soon(reason: str, exit_code: int) -> None:
    """Ask stages to stop; interrupt the main thread if they have not after FORCE_AFTER_S, exit after EXIT_AFTER_S."""
    request_stop(reason)
    for timer in (threading.Timer(FORCE_AFTER_S, _thread.interrupt_main),
                  threading.Timer(EXIT_AFTER_S, os._exit, args=(exit_code,))):
        timer.daemon = True
        timer.start()


@contextmanager
def stop_after(minutes: float | None) -> Iterator[None]:
    """Stop the run like SIGTERM does once it has run `minutes` (None: no limit); a deployment's timeout."""
    if minutes is None:
        yield
        return
    timer = threading.Timer(minutes * 60, _stop_soon, args=(f"timed out after {minutes:g} min", 124))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _install() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _on_signal) for s in SIGNALS}


def _restore(previous: dict[int, Any]) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Around a whole run (the CLI): SIGTERM / SIGINT stop it as described above."""
    previous = _install()
    try:
        yield
    finally:
        _restore(previous)


@contextmanager
def stage_stops_at_step() -> Iterator[None]:
    """Around a stage's computation: a signal asks it to stop at its next step (over Prefect's own handler)."""
    global _stages_running
    previous = _install()
    with _count_lock:
        _stages_running += 1
    try:
        yield
    finally:
        with _count_lock:
            _stages_running -= 1
        _restore(previous)

"""A stop request shared by the stages of a run (set on SIGTERM / SIGINT): loops finish their step and checkpoint."""

from __future__ import annotations

import threading

STOP = threading.Event()
"""Set when the run was asked to stop; training loops check it every step."""


def request_stop() -> None:
    """Ask every running stage to stop at its next step boundary."""
    STOP.set()


def stop_requested() -> bool:
    """True once the run was asked to stop."""
    return STOP.is_set()

"""A stop request shared by a run's stages (SIGTERM, SIGINT, a timeout): loops finish their step and checkpoint."""

from __future__ import annotations

import threading

STOP = threading.Event()
"""Set when the run was asked to stop; training loops check it every step."""
_reason = ["stop requested"]


def request_stop(reason: str = "stop requested") -> None:
    """Ask every running stage to stop at its next step boundary, saying why."""
    if not STOP.is_set():
        _reason[0] = reason
    STOP.set()


def stop_requested() -> bool:
    """True once the run was asked to stop."""
    return STOP.is_set()


def stop_reason() -> str:
    """Why the run was asked to stop (`SIGTERM`, `timed out after 600 min`, ...)."""
    return _reason[0]

"""One lock for every figure a stage draws: matplotlib (pyplot's figure registry, mathtext's parser) is not
thread-safe, and stages of a graph run side by side in threads."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
PLOT_LOCK = threading.RLock()
"""Held while a figure is built and saved."""


def serialized(fn: Callable[P, R]) -> Callable[P, R]:
    """Run the plotting function `fn` under PLOT_LOCK."""

    @functools.wraps(fn)
    def locked(*args: P.args, **kwargs: P.kwargs) -> R:
        with PLOT_LOCK:
            return fn(*args, **kwargs)

    return locked

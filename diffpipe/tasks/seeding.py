"""The process's global torch RNG, held by one stage at a time.

Stages that do not depend on each other run at once in threads of one process (`runtime.max_parallel_stages`),
and torch's default generator is process-wide. A stage that seeds it and then builds a network (whose initial
weights are drawn from it) must not interleave with another stage doing the same, or each network's weights
depend on thread timing and a concurrent run stops being bit-identical to a serial one. Work that draws from a
`torch.Generator` of its own needs none of this.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_GLOBAL_RNG = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the global torch RNG seeded to `seed`, excluding every other thread's `seeded` block."""
    with _GLOBAL_RNG:
        torch.manual_seed(seed)
        yield

"""Run facts (wall times, speeds, energy, the step a run resumed from) kept out of the hashed files of an artifact.

An artifact's digest must depend on its content only, so that a deterministic stage republishes the same
digest and nothing downstream reruns. Stages put timings into their metrics; before publishing, every
top-level JSON file of the staging folder loses its timing entries, which go to the manifest's lineage
(`lineage.timings`) and the cache index record instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffpipe.storage.formats import read_json, write_json

TIMING_SUFFIXES = ("_s", "_per_s", "_seconds", "_j")
"""A key ending like this holds a run fact, not content: seconds, speeds and joules (`train_wall_s`,
`flop_count_s`, `steps_per_s`, `rollout_seconds`, `cpu_energy_j`)."""
TIMING_KEYS = frozenset({"resumed_from_step", "seconds", "wall_s"})
"""Keys that are run facts by name."""


def is_timing(key: str) -> bool:
    """True when a metric or column named `key` is a run fact (differs between identical runs)."""
    return key in TIMING_KEYS or key.endswith(TIMING_SUFFIXES)


def split_timings(obj: Any) -> tuple[Any, dict[str, Any]]:
    """`obj` without its timing entries (at any depth of nested dicts), and those entries by dotted path."""
    if not isinstance(obj, dict):
        return obj, {}
    content: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for k, v in obj.items():
        if is_timing(str(k)):
            timings[str(k)] = v
            continue
        content[k], inner = split_timings(v)
        timings.update({f"{k}.{path}": value for path, value in inner.items()})
    return content, timings


def move_timings(staging: Path) -> dict[str, dict[str, Any]]:
    """Strip the timing entries from the top-level JSON files of `staging`; returns them per file name."""
    moved = {}
    for path in sorted(staging.glob("*.json")):
        content, timings = split_timings(read_json(path))
        if timings:
            write_json(path, content)
            moved[path.name] = timings
    return moved

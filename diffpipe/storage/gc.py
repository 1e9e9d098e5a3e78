"""Garbage collection of a store: what no cache key or named run refers to, and what killed runs left behind.

Kept, always:
- the newest run of every named stage (`names/<pipeline>/<stage>.json`) and its artifact;
- with `keep_last=N`, the N newest cache keys of each (pipeline, stage); without it, every cache key;
- every artifact a kept artifact was computed from (its lineage's upstream digests, transitively);
- anything younger than `older_than_days`, and anything younger than `GRACE_S` whatever the options say:
  a publish in flight writes its object, then its manifest, then its key, and must not lose any of them;
- training checkpoints of an unpublished key touched within the last day (a run that may resume).

Removed: unreferenced cache keys and artifacts (manifest first, so nothing half-deleted looks complete),
object folders without a manifest and staging folders (a killed publish), and training checkpoints of
keys that are already published or whose run stopped long ago.

For a remote store, also this machine's read cache (storage/remote.py): cached copies of artifacts no kept
key or named run refers to (the store no longer holds them, or is removing them now), copies unused for
longer than `older_than_days` (when given), then the least recently used copies until the cache is within
`DIFFPIPE_CACHE_MAX_GB`. Their bytes count in what gc freed. A copy a live process has read (a running
stage's inputs and outputs) is pinned and stays, whatever the options say.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import remote
from .inventory import Entry, Inventory, take
from .store import ArtifactStore

GRACE_S = 3600.0
"""Nothing younger than this is removed: it may belong to a run that is writing right now."""

DAY_S = 86400.0


@dataclass
class Removal:
    """One thing gc removes (or would remove, in a dry run)."""

    what: str
    """`key`, `artifact`, `partial object`, `staging`, `checkpoints` or `cached copy` (the local read cache)."""
    path: str
    nbytes: int
    why: str


@dataclass
class GcReport:
    """What a gc pass removed and how many bytes that freed."""

    removals: list[Removal] = field(default_factory=list)
    dry_run: bool = False

    @property
    def freed(self) -> int:
        """Bytes freed (or that would be freed)."""
        return sum(r.nbytes for r in self.removals)

    @property
    def freed_cache(self) -> int:
        """Of `freed`, the bytes of this machine's read cache (`cached copy` removals)."""
        return sum(r.nbytes for r in self.removals if r.what == "cached copy")


def collect(store: ArtifactStore, keep_last: int | None = None, older_than_days: float = 0.0,
            dry_run: bool = False) -> GcReport:
    """Find (and unless `dry_run`, remove) what nothing refers to; see the module docstring for the rules."""
    inv = take(store)
    min_age = max(GRACE_S, older_than_days * DAY_S)
    report = GcReport(dry_run=dry_run)
    kept_keys = _kept_keys(inv, keep_last)
    for key, entry in inv.keys.items():
        if key not in kept_keys and entry.age_s >= min_age:
            report.removals.append(Removal("key", entry.path, entry.nbytes, "not among the kept runs"))
    live = _reachable(inv, {inv.keys[k].info["sha256"] for k in kept_keys if k in inv.keys})
    for sha, entry in inv.objects.items():
        if sha not in live and entry.age_s >= min_age:
            report.removals.append(Removal("artifact", entry.path, entry.nbytes, "no kept key refers to it"))
    for entry in inv.partial_objects.values():
        if entry.age_s >= max(GRACE_S, min_age):
            report.removals.append(Removal("partial object", entry.path, entry.nbytes, "no manifest (killed publish)"))
    for entry in inv.staging.values():
        if entry.age_s >= max(GRACE_S, min_age):
            report.removals.append(Removal("staging", entry.path, entry.nbytes, "left by a killed upload"))
    leased = store.active_leases()  # keys being computed now: their checkpoints are live
    for key, entry in inv.runs.items():
        why = None if key in leased else _stale_run(key, entry, inv, min_age)
        if why:
            report.removals.append(Removal("checkpoints", entry.path, entry.nbytes, why))
    if not store.is_local:
        removed = {r.path.rstrip("/").rsplit("/", 1)[-1] for r in report.removals if r.what == "artifact"}
        report.removals.extend(_read_cache_removals(store, inv, live, removed, older_than_days))
    if not dry_run:
        _remove(store, report)
    return report


def _read_cache_removals(store: ArtifactStore, inv: Inventory, live: set[str], removed: set[str],
                         older_than_days: float) -> list[Removal]:
    """This machine's cached copies of the store's artifacts that this pass removes or nothing kept refers to,
    or unused for longer than `older_than_days` (when > 0), then the least recently used over the size bound;
    never a pinned one."""
    entries = [c for c in remote.cached_artifacts() if not remote.pinned(c.path)]
    mine, now, out, gone = store.read_cache.folder, time.time(), [], set()
    for c in entries:
        if c.path.parent != mine:
            continue
        if c.sha not in inv.objects:
            why = "the store no longer holds it"
        elif c.sha in removed:
            why = "gc removes it from the store"
        elif c.sha not in live:
            why = "no kept key or named run refers to it"
        elif older_than_days > 0 and now - c.last_used >= older_than_days * DAY_S:
            why = f"unused for {(now - c.last_used) / DAY_S:.1f} days"
        else:
            continue
        out.append(Removal("cached copy", str(c.path), c.nbytes, why))
        gone.add(c.path)
    bound = remote.cache_max_bytes()
    out += [Removal("cached copy", str(c.path), c.nbytes, f"least recently used, over the {bound / 1e9:g} GB bound")
            for c in remote.over_bound(bound, [c for c in entries if c.path not in gone])]
    return out


def _kept_keys(inv: Inventory, keep_last: int | None) -> set[str]:
    named = {key for stages in inv.names.values() for key in stages.values()}
    if keep_last is None:
        return set(inv.keys) | named
    by_stage: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for key, entry in inv.keys.items():
        obj = inv.objects.get(entry.info.get("sha256") or "")
        stage = (obj.info.get("pipeline") if obj else None) or "?", entry.info.get("node") or "?"
        by_stage.setdefault(stage, []).append((entry.age_s, key))
    newest = {key for runs in by_stage.values() for _, key in sorted(runs)[:keep_last]}
    return newest | named


def _reachable(inv: Inventory, roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [sha for sha in roots if sha]
    while todo:
        sha = todo.pop()
        if sha in seen:
            continue
        seen.add(sha)
        obj = inv.objects.get(sha)
        if obj is not None:
            todo.extend(obj.info.get("upstream", {}).values())
    return seen


def _stale_run(key: str, entry: Entry, inv: Inventory, min_age: float) -> str | None:
    if entry.age_s < GRACE_S:
        return None
    if key in inv.keys:
        return "its stage is published"
    if entry.age_s >= min_age and not entry.info.get("steps"):
        return "no complete checkpoint"
    if entry.age_s >= max(min_age, DAY_S):
        return f"untouched for {entry.age_s / DAY_S:.1f} days"
    return None


def _remove(store: ArtifactStore, report: GcReport) -> None:
    order = ("key", "artifact", "checkpoints", "partial object", "staging", "cached copy")
    pinned = []
    for removal in sorted(report.removals, key=lambda r: order.index(r.what)):
        if removal.what == "cached copy":
            if not remote.evict(Path(removal.path)):
                pinned.append(removal)  # a live process reads it: kept, and not counted as freed
            continue
        if removal.what == "artifact":  # uncommit first: a half-deleted object never looks complete
            sha = removal.path.rstrip("/").rsplit("/", 1)[-1]
            _rm(store, store.path("manifests", f"{sha}.json"))
        _rm(store, removal.path)
    report.removals = [r for r in report.removals if r not in pinned]


def _rm(store: ArtifactStore, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # removed meanwhile: what gc wanted anyway
        store.fs.rm(path, recursive=True)


def describe(report: GcReport) -> list[str]:
    """One line per removal and a total, for the terminal."""
    verb = "would remove" if report.dry_run else "removed"
    lines = [f"{verb} {r.what:<14} {r.nbytes / 1e6:9.2f} MB  {r.path}  ({r.why})" for r in report.removals]
    total = f"{report.freed / 1e6:.2f} MB ({report.freed} bytes)"
    lines.append(f"{'would free' if report.dry_run else 'freed'} {total} in {len(report.removals)} items")
    cached = sum(r.what == "cached copy" for r in report.removals)
    if cached:
        lines[-1] += (f": {(report.freed - report.freed_cache) / 1e6:.2f} MB in the store, "
                      f"{report.freed_cache / 1e6:.2f} MB in {cached} cached copies on this machine")
    return lines


"""What a store holds: named stages, cache keys, artifacts, training checkpoints and leftovers, with sizes and ages.

Read-only; `diffpipe ls` prints it and `diffpipe gc` decides from it what nothing refers to any more.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .store import ArtifactStore


@dataclass
class Entry:
    """One thing in the store: a path, its size in bytes and its age in seconds."""

    path: str
    nbytes: int
    age_s: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    """Everything under a store root, by kind."""

    names: dict[str, dict[str, str]]
    """Pipeline -> stage -> the cache key its newest run produced."""
    keys: dict[str, Entry]
    """Cache key -> its index record (`info`: node, kind, artifact sha)."""
    objects: dict[str, Entry]
    """Artifact sha -> the published object (`info`: kind, pipeline, node, upstream digests)."""
    partial_objects: dict[str, Entry]
    """Object folders with no manifest: left by a killed publish, or a publish in flight."""
    runs: dict[str, Entry]
    """Cache key -> its resumable training checkpoints (`info`: steps)."""
    staging: dict[str, Entry]
    """Upload and checkpoint staging folders (`tmp/<uuid>`, `runs/<key>/.tmp-*`)."""


def take(store: ArtifactStore) -> Inventory:
    """List the whole store (one pass over its folders)."""
    now = time.time()
    manifests = {_stem(p): p for p in _ls(store, "manifests") if p.endswith(".json")}
    objects, partial = {}, {}
    for prefix in _ls(store, "objects"):
        for folder in _ls_path(store, prefix):
            sha = folder.rstrip("/").rsplit("/", 1)[-1]
            if sha in manifests:
                objects[sha] = _object_entry(store, sha, folder, now)
            else:
                partial[sha] = _tree_entry(store, folder, now)
    keys = {}
    for path in _ls(store, "keys"):
        if path.endswith(".json"):
            record = _read(store, path) or {}
            sha = (record.get("ref") or {}).get("sha256")
            keys[_stem(path)] = Entry(path, _size(store, path), _age(store, path, now),
                                      {"node": record.get("node"), "kind": record.get("kind"), "sha256": sha})
    names: dict[str, dict[str, str]] = {}
    for pipeline in _ls(store, "names"):
        for path in _ls_path(store, pipeline):
            record = _read(store, path) or {}
            if "key" in record:
                names.setdefault(_name(pipeline), {})[_stem(path)] = record["key"]
    runs, staging = {}, {}
    for folder in _ls(store, "runs"):
        for sub in _ls_path(store, folder):
            if _name(sub).startswith(".tmp-"):
                staging[sub] = _tree_entry(store, sub, now)
        steps = sorted(int(_name(s)[5:]) for s in _ls_path(store, folder) if _name(s).startswith("step-"))
        runs[_name(folder)] = _tree_entry(store, folder, now, {"steps": steps})
    for folder in _ls(store, "tmp"):
        staging[folder] = _tree_entry(store, folder, now)
    return Inventory(names, keys, objects, partial, runs, staging)


def _object_entry(store: ArtifactStore, sha: str, folder: str, now: float) -> Entry:
    manifest = _read(store, store.path("manifests", f"{sha}.json")) or {}
    lineage = manifest.get("lineage", {})
    created = lineage.get("created")
    age = now - datetime.fromisoformat(created).timestamp() if created else _age(store, folder, now)
    info = {"kind": manifest.get("ref", {}).get("kind"), "pipeline": lineage.get("pipeline"),
            "node": lineage.get("node"), "upstream": lineage.get("upstream", {})}
    return Entry(folder, int(manifest.get("ref", {}).get("nbytes", 0)), age, info)


def _tree_entry(store: ArtifactStore, folder: str, now: float, info: dict[str, Any] | None = None) -> Entry:
    files = store.fs.find(folder, detail=True)
    size = sum(int(f.get("size") or 0) for f in files.values())
    newest = max((_mtime(f) for f in files.values()), default=None)
    age = now - newest if newest is not None else _age(store, folder, now)
    return Entry(folder, size, age, info or {})


def _ls(store: ArtifactStore, *parts: str) -> list[str]:
    return _ls_path(store, store.path(*parts))


def _ls_path(store: ArtifactStore, path: str) -> list[str]:
    try:
        return sorted(store.fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def _read(store: ArtifactStore, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.fs.cat_file(path))
    except (OSError, ValueError):
        return None


def _size(store: ArtifactStore, path: str) -> int:
    try:
        return int(store.fs.info(path).get("size") or 0)
    except OSError:
        return 0


def _age(store: ArtifactStore, path: str, now: float) -> float:
    try:
        mtime = _mtime(store.fs.info(path))
    except OSError:
        return 0.0
    return now - mtime if mtime is not None else 0.0


def _mtime(info: dict[str, Any]) -> float | None:
    """Modification time of an fsspec info dict (local `mtime`, S3 `LastModified`, memory `created`)."""
    for k in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(k)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return None


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _stem(path: str) -> str:
    return _name(path).removesuffix(".json")

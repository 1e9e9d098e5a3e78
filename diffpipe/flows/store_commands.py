"""`diffpipe ls STORE` and `diffpipe gc STORE`: what a store holds, and removing what nothing refers to.

STORE is an artifact root (`artifacts`, `s3://bucket/prefix`, ...) or a pipeline spec, whose `storage.root`
is then used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffpipe.errors import InputError


def add_store_commands(sub: Any) -> None:
    """Register the `ls` and `gc` subcommands on the CLI's subparsers."""
    c = sub.add_parser("ls", help="pipelines, runs and artifacts in a store, with sizes and ages")
    c.add_argument("store", help="artifact root (path or URI) or a pipeline YAML file")
    c.add_argument("--json", action="store_true", help="print one JSON document")
    c.set_defaults(fn=cmd_ls)
    c = sub.add_parser("gc", help="remove artifacts, keys and checkpoints nothing refers to")
    c.add_argument("store", help="artifact root (path or URI) or a pipeline YAML file")
    c.add_argument("--keep-last", type=int, default=None, metavar="N",
                   help="keep the N newest runs of each stage (default: every cache key)")
    c.add_argument("--older-than", type=float, default=0.0, metavar="DAYS",
                   help="only remove what is older than DAYS (nothing younger than an hour is ever removed)")
    c.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    c.add_argument("--while-running", action="store_true",
                   help="collect even while a run computes a stage in the store (what it holds stays)")
    c.add_argument("--json", action="store_true", help="print one JSON document")
    c.set_defaults(fn=cmd_gc)


def open_store(target: str):
    """The store named by an artifact root or by a spec file's `storage.root`, checked to be reachable."""
    from diffpipe.storage import ArtifactStore

    root = target
    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        from .spec_loading import load_spec

        root = load_spec(target).storage.root
    elif "://" not in target and not Path(target).is_dir():
        raise InputError("store", "no artifact store there", "an artifact root or a pipeline spec", repr(target))
    store = ArtifactStore(root)
    store.check_reachable()
    return store


def cmd_ls(args: argparse.Namespace) -> int:
    """Print the store's named stages, artifacts, runs in progress and leftovers."""
    from diffpipe.storage.inventory import take

    store = open_store(args.store)
    inv = take(store)
    cache = None if store.is_local else _read_cache(store)
    if args.json:
        print(json.dumps({"names": inv.names, **{k: {n: vars(e) for n, e in getattr(inv, k).items()} for k in
                                                 ("keys", "objects", "partial_objects", "runs", "staging")},
                          "read_cache": cache}, indent=2, default=str))
        return 0
    by_key = {key: entry.info.get("sha256") for key, entry in inv.keys.items()}
    for pipeline, stages in sorted(inv.names.items()):
        print(f"pipeline {pipeline}")
        for stage, key in sorted(stages.items()):
            obj = inv.objects.get(by_key.get(key) or "")
            where = f"{obj.info['kind']} {by_key[key][:12]}  {_size(obj.nbytes)}  {_age(obj.age_s)}" if obj else "-"
            print(f"  {stage:<16} key {key[:12]}  {where}")
    print(f"artifacts: {len(inv.objects)}, {_size(sum(e.nbytes for e in inv.objects.values()))}")
    for sha, e in sorted(inv.objects.items(), key=lambda kv: kv[1].age_s):
        print(f"  {sha[:12]}  {e.info['kind'] or '?':<10} {_size(e.nbytes):>10}  {_age(e.age_s):>9}  "
              f"{e.info['pipeline']}/{e.info['node']}")
    for title, entries in (("training checkpoints", inv.runs), ("objects without a manifest", inv.partial_objects),
                           ("staging folders", inv.staging)):
        if entries:
            print(f"{title}: {len(entries)}")
            for name, e in entries.items():
                steps = f"  steps {e.info['steps']}" if "steps" in e.info else ""
                print(f"  {name.rsplit('/', 1)[-1][:12]}  {_size(e.nbytes):>10}  {_age(e.age_s):>9}{steps}")
    if cache is not None:
        print(f"read cache on this machine: {cache['folder']}: {cache['artifacts']} artifacts, "
              f"{_size(cache['nbytes'])} (all stores: {_size(cache['all_nbytes'])} of {_size(cache['max_bytes'])})")
    return 0


def _read_cache(store: Any) -> dict[str, Any]:
    """Where this machine caches a remote store's artifacts, how many and how big, and the cache's bound."""
    from diffpipe.storage import remote

    entries = remote.cached_artifacts()
    mine = [c for c in entries if c.path.parent == store.read_cache.folder]
    return {"folder": str(store.read_cache.folder), "artifacts": len(mine), "nbytes": sum(c.nbytes for c in mine),
            "all_nbytes": sum(c.nbytes for c in entries), "max_bytes": remote.cache_max_bytes()}


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove (or with --dry-run list) what no kept key or named run refers to; print the bytes freed.

    While a run computes a stage in the store (a live lease), gc exits 2 naming it and removes nothing,
    unless `--while-running` (or `--dry-run`) says to go on."""
    from diffpipe.storage.gc import collect, describe

    if args.keep_last is not None and args.keep_last < 1:
        raise InputError("--keep-last", "must keep at least one run", "N >= 1", str(args.keep_last))
    if args.older_than < 0:
        raise InputError("--older-than", "an age cannot be negative", "DAYS >= 0", str(args.older_than))
    store = open_store(args.store)
    running = store.active_leases()
    if running and not (args.dry_run or args.while_running):
        import datetime as dt

        held = "; ".join(f"key {key[:12]} being computed by {lease.holder.rsplit(':', 1)[0]} (lease until "
                         f"{dt.datetime.fromtimestamp(lease.expires, dt.UTC):%H:%M:%S} UTC)"
                         for key, lease in sorted(running.items()))
        raise InputError("store", f"a run is writing to {store.root_uri}: nothing was removed",
                         "no stage computing there, or --while-running (what running stages hold stays)", held)
    report = collect(store, args.keep_last, args.older_than, args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": report.dry_run, "freed_bytes": report.freed,
                          "freed_store_bytes": report.freed - report.freed_cache,
                          "freed_cache_bytes": report.freed_cache,
                          "removed": [vars(r) for r in report.removals]}, indent=2))
    else:
        print("\n".join(describe(report)))
    return 0


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.1f} kB"


def _age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds / span:.1f} {unit}"
    return f"{seconds:.0f} s"

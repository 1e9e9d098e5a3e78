"""Run a pipeline spec's stages in this process (no Prefect), reusing the store's cache: for benchmarks.

The same stage functions, keys and store as `diffpipe run`; only the Prefect flow around them is left out,
so a benchmark's numbers come from the code the pipeline runs. As there, timings leave the hashed files for
the manifest's lineage and the index record (flows/timings.py), so both publish the same digests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from diffpipe.flows.plan import node_key, nodes
from diffpipe.flows.timings import move_timings
from diffpipe.schemas import ArtifactRef, PipelineSpec
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import read_json
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.registry import get_domain, get_stage


def run_in_process(spec: PipelineSpec, only: set[str] | None = None) -> tuple[ArtifactStore, dict[str, ArtifactRef]]:
    """Every node of `spec` (or those in `only`, plus what they need, in order), cached in its store."""
    store, refs = ArtifactStore(spec.storage.root), {}
    for node in nodes(spec):
        if only is not None and node.name not in only and node.name not in needed(spec, only):
            continue
        key, _ = node_key(spec, node, refs)
        ref = store.lookup(key, verify=False)
        if ref is None:
            with tempfile.TemporaryDirectory() as tmp:
                ctx = StageContext(spec, node.name, key, {n: refs[s] for n, s in node.upstream.items()}, store,
                                   Path(tmp), log=lambda m: None, progress=False)
                out = get_domain(node.kind).build(ctx) if node.name == "data" else get_stage(node.kind)(ctx)
                lineage = {"node": node.name, "cache_key": key, "timings": move_timings(Path(tmp))}
                ref = store.publish(Path(tmp), out.kind, lineage)
            store.record_key(key, ref, {"node": node.name, "kind": node.kind, "metrics": out.metrics})
        refs[node.name] = ref
    return store, refs


def needed(spec: PipelineSpec, names: set[str]) -> set[str]:
    """Every node the named ones read from, transitively."""
    graph = {n.name: set(n.upstream.values()) for n in nodes(spec)}
    out, todo = set(), list(names)
    while todo:
        for up in graph.get(todo.pop(), ()):
            if up not in out:
                out.add(up)
                todo.append(up)
    return out


def metrics_of(store: ArtifactStore, ref: ArtifactRef) -> dict[str, Any]:
    """The metrics.json a stage left in its artifact, with its top-level timings back from the lineage."""
    timings = store.manifest(ref.sha256)["lineage"].get("timings", {}).get("metrics.json", {})
    return {**read_json(store.local_path(ref) / "metrics.json"), **{k: v for k, v in timings.items() if "." not in k}}

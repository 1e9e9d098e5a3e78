"""The Prefect task that runs one node: reuse the indexed artifact, or take the key's lease and build it.

The store's key index is the only source of truth. Prefect caches each task under the node's cache key
and artifact root (`cache_key_fn`), so cached stages show as *Cached* in the UI, but what Prefect returns
is never used: the flow reads the artifact from the index after the task is done (graph.py).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task

from diffpipe.errors import DiffpipeError, StageError
from diffpipe.schemas import ArtifactRef, PipelineSpec
from diffpipe.storage import ArtifactStore, env_info
from diffpipe.tasks.context import StageContext, StageOutput
from diffpipe.tasks.launch import stage_function
from diffpipe.tasks.registry import get_domain

from .cache import canonical_json, sha256_text
from .progress import LiveProgress, WorkProgress
from .signals import stage_stops_at_step
from .timings import move_timings
from .ui import publish_stage_artifacts
from .watch import artifact_prefix, computed_by


def store_of(spec: PipelineSpec) -> ArtifactStore:
    """The artifact store of a pipeline, with its lease settings."""
    return ArtifactStore(spec.storage.root, lease_ttl_s=spec.storage.lease_ttl_s)


def run_node(node: str, kind: str, key: str, pipeline: dict[str, Any], upstream: dict[str, Any],
             inputs: dict[str, Any], threads: int) -> dict[str, Any]:
    """Body of every node task: `{"ref": ..., "computed": bool}` for the artifact of cache key `key`.

    Computes only while holding the key's lease, so concurrent runs (threads, processes, hosts) sharing the
    root build each key once: the others wait for the lease and then find the artifact in the index.
    """
    spec = PipelineSpec.model_validate(pipeline)
    store = store_of(spec)
    verify = spec.storage.verify_on_load
    if (ref := store.lookup(key, verify=verify)) is not None:
        return {"ref": ref.model_dump(mode="json"), "computed": False}
    with store.lease(key):
        if (ref := store.lookup(key, verify=verify)) is not None:
            return {"ref": ref.model_dump(mode="json"), "computed": False}
        ref = _build(spec, store, node, kind, key, upstream, inputs, threads)
    return {"ref": ref.model_dump(mode="json"), "computed": True}


def _build(spec: PipelineSpec, store: ArtifactStore, node: str, kind: str, key: str, upstream: dict[str, Any],
           inputs: dict[str, Any], threads: int) -> ArtifactRef:
    """Compute the node into a staging folder, publish it with its lineage, and index it under `key`."""
    logger = get_run_logger()
    torch.set_num_threads(threads)  # per thread: concurrent stages share the cores instead of oversubscribing
    refs = {name: ArtifactRef.model_validate(r) for name, r in upstream.items()}
    with tempfile.TemporaryDirectory(prefix=f"diffpipe-{node}-") as tmp:
        ctx = StageContext(spec, node, key, refs, store, Path(tmp), log=logger.info,
                           on_progress=LiveProgress(artifact_prefix(spec, node), node),
                           on_work=WorkProgress(artifact_prefix(spec, node), node))
        t0 = time.perf_counter()
        with stage_stops_at_step():
            output = _compute(ctx, kind)
        wall = time.perf_counter() - t0
        lineage = {"pipeline": spec.name, "node": node, "kind": kind, "cache_key": key, "key_inputs": inputs,
                   "upstream": {n: r.sha256 for n, r in refs.items()}, "environment": env_info(),
                   "wall_time_s": wall, "torch_threads": threads, "timings": move_timings(Path(tmp)),
                   "created": datetime.now(UTC).isoformat(), "prefect": computed_by()}
        ref = store.publish(Path(tmp), output.kind, lineage)
        publish_stage_artifacts(spec, node, kind, ref, store, output, Path(tmp), wall)
    store.record_key(key, ref, {"node": node, "kind": kind, "inputs": inputs, "metrics": output.metrics})
    store.record_name(spec.name, node, {"key": key, "inputs": inputs})
    store.clear_run(key)
    logger.info(f"{node}: published {ref.kind} {ref.sha256[:12]} ({ref.nbytes / 1e6:.2f} MB) in {wall:.1f} s")
    return ref


def _compute(ctx: StageContext, kind: str) -> StageOutput:
    fn = get_domain(kind).build if ctx.node == "data" else stage_function(kind, ctx.runtime)
    try:
        return fn(ctx)
    except DiffpipeError:
        raise
    except Exception as e:
        raise StageError(f"stage '{ctx.node}' ({kind}) failed: {e.__class__.__name__}: {e}") from e


def _cache_key_fn(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect's cache key: ours plus the artifact root, so two roots in one project never share a record."""
    return sha256_text(canonical_json([parameters["pipeline"]["storage"]["root"], parameters["key"]]))


NODE_TASKS = {}


def node_task(kind: str):
    """The cached Prefect task for nodes of `kind` (one task per stage or data kind)."""
    if kind not in NODE_TASKS:
        NODE_TASKS[kind] = task(
            run_node, name=kind, task_run_name="{node}", cache_key_fn=_cache_key_fn,
            result_serializer="json", persist_result=True,
        )
    return NODE_TASKS[kind]

"""The Prefect flow: walks the nodes in order; each node is a cached Prefect task returning an ArtifactRef.

Our store's key index is the source of truth for caching (docs/cache-keys.md). Prefect's task cache uses
the same key (`cache_key_fn`), so cached stages show as Cached in the UI; when our index has no valid
artifact for a key, the task is run with `refresh_cache=True`, so a corrupt or deleted artifact is
recomputed even if Prefect still holds a record.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from diffpipe.errors import DiffpipeError, StageError
from diffpipe.schemas import ArtifactRef, PipelineSpec
from diffpipe.storage import ArtifactStore, env_info
from diffpipe.tasks.context import StageContext, StageOutput
from diffpipe.tasks.launch import stage_function
from diffpipe.tasks.registry import get_domain

from .checks import check_spec
from .plan import Node, node_key, nodes
from .progress import LiveProgress
from .signals import stage_stops_at_step, stop_after
from .spec_loading import load_spec
from .ui import image_markdown
from .watch import artifact_prefix, computed_by, link_cached, run_name


def _run_node(node: str, kind: str, key: str, pipeline: dict[str, Any], upstream: dict[str, Any],
              inputs: dict[str, Any]) -> dict[str, Any]:
    """Body of every node task: reuse the indexed artifact or compute, publish and index it."""
    spec = PipelineSpec.model_validate(pipeline)
    store = ArtifactStore(spec.storage.root)
    ref = store.lookup(key, verify=spec.storage.verify_on_load)
    if ref is not None:
        return ref.model_dump(mode="json")
    logger = get_run_logger()
    if spec.runtime.num_threads:
        torch.set_num_threads(spec.runtime.num_threads)
    refs = {name: ArtifactRef.model_validate(r) for name, r in upstream.items()}
    with tempfile.TemporaryDirectory(prefix=f"diffpipe-{node}-") as tmp:
        ctx = StageContext(spec, node, key, refs, store, Path(tmp), log=logger.info,
                           on_progress=LiveProgress(artifact_prefix(spec, node), node))
        t0 = time.perf_counter()
        with stage_stops_at_step():
            output = _compute(ctx, kind)
        wall = time.perf_counter() - t0
        lineage = {"pipeline": spec.name, "node": node, "kind": kind, "cache_key": key, "key_inputs": inputs,
                   "upstream": {n: r.sha256 for n, r in refs.items()}, "environment": env_info(),
                   "wall_time_s": wall, "created": datetime.now(UTC).isoformat(), "prefect": computed_by()}
        ref = store.publish(Path(tmp), output.kind, lineage)
        _publish_ui(spec, node, kind, ref, store, output, Path(tmp), wall)
    store.record_key(key, ref, {"node": node, "kind": kind, "inputs": inputs, "metrics": output.metrics})
    store.record_name(spec.name, node, {"key": key, "inputs": inputs})
    store.clear_run(key)
    logger.info(f"{node}: published {ref.kind} {ref.sha256[:12]} ({ref.nbytes / 1e6:.2f} MB) in {wall:.1f} s")
    return ref.model_dump(mode="json")


def _compute(ctx: StageContext, kind: str) -> StageOutput:
    fn = get_domain(kind).build if ctx.node == "data" else stage_function(kind, ctx.runtime)
    try:
        return fn(ctx)
    except DiffpipeError:
        raise
    except Exception as e:
        raise StageError(f"stage '{ctx.node}' ({kind}) failed: {e.__class__.__name__}: {e}") from e


def _publish_ui(spec: PipelineSpec, node: str, kind: str, ref: ArtifactRef, store: ArtifactStore,
                output: StageOutput, workdir: Path, wall: float) -> None:
    slug = artifact_prefix(spec, node)
    rows = [{"metric": k, "value": v} for k, v in _flatten(output.metrics).items()]
    if rows:
        create_table_artifact(rows, key=f"{slug}-metrics", description=f"{node} ({kind}) metrics")
    location = store.uri(ref)
    files = sorted(p.relative_to(workdir).as_posix() for p in workdir.iterdir())
    md = [f"## {node} ({kind})", output.summary, "",
          f"- artifact: `{location}`", f"- kind: {ref.kind}, sha256 `{ref.sha256}`, {ref.nbytes / 1e6:.2f} MB",
          f"- wall time: {wall:.1f} s", f"- files: {', '.join(f'`{f}`' for f in files)}", ""]
    md += [image_markdown(title, path) for title, path in output.images.items()]
    create_markdown_artifact("\n".join(md), key=f"{slug}-summary", description=f"{node} ({kind}) summary")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cache_key_fn(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["key"]


NODE_TASKS = {}


def node_task(kind: str):
    """The cached Prefect task for nodes of `kind` (one task per stage or data kind)."""
    if kind not in NODE_TASKS:
        NODE_TASKS[kind] = task(
            _run_node, name=kind, task_run_name="{node}", cache_key_fn=_cache_key_fn,
            result_serializer="json", persist_result=True,
        )
    return NODE_TASKS[kind]


def execute(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Run every node in order inside the current flow; returns one summary dict per node."""
    store = ArtifactStore(spec.storage.root)
    store.check_writable()
    refs: dict[str, ArtifactRef] = {}
    summary = []
    for node in nodes(spec):
        refs[node.name], entry = _run_one(spec, store, node, refs)
        summary.append(entry)
    return summary


def _run_one(spec: PipelineSpec, store: ArtifactStore, node: Node, refs: dict[str, ArtifactRef]):
    key, inputs = node_key(spec, node, refs)
    cached = store.lookup(key, verify=spec.storage.verify_on_load) is not None
    upstream = {name: refs[src].model_dump(mode="json") for name, src in node.upstream.items()}
    t = node_task(node.kind).with_options(refresh_cache=not cached)
    ref = ArtifactRef.model_validate(t(node=node.name, kind=node.kind, key=key, pipeline=spec.model_dump(mode="json"),
                                       upstream=upstream, inputs=inputs))
    if cached:
        link_cached(spec, node.name, ref, store)
    record = store.key_record(key) or {}
    return ref, {"name": node.name, "stage": node.kind, "state": "cached" if cached else "executed", "cache_key": key,
                 "artifact": ref.model_dump(mode="json"), "metrics": record.get("metrics", {})}


@flow(name="diffpipe", flow_run_name=run_name, log_prints=True, persist_result=True, result_serializer="json")
def pipeline_flow(spec_path: str, overrides: list[str] | None = None,
                  timeout_minutes: float | None = None) -> list[dict[str, Any]]:
    """Validate the spec at `spec_path` (with `key=value` overrides) as `diffpipe run` does and run its stages,
    cached; past `timeout_minutes` the run stops as on SIGTERM (training checkpoints where it is)."""
    spec = load_spec(spec_path, overrides)
    check_spec(spec)
    with stop_after(timeout_minutes):
        return execute(spec)

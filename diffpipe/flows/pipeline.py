"""The Prefect flow of a pipeline: its nodes as a graph of task futures on the flow's task runner.

Our store's key index is the source of truth for caching: a node's task reuses the indexed artifact or
builds it under the key's lease (node_task.py); the flow reads every artifact back from the index
(graph.py). The task runner is Prefect's thread pool, bounded by `runtime.max_parallel_stages`, or, with
`runtime.dask_address`, prefect-dask's DaskTaskRunner on that cluster.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from diffpipe.schemas import PipelineSpec, RuntimeSpec

from .checks import check_spec
from .graph import parallel_stages, run_graph
from .signals import stop_after
from .spec_loading import load_spec
from .stage_table import publish_stage_table
from .watch import run_name


def task_runner(runtime: RuntimeSpec) -> TaskRunner:
    """The task runner of a run: DaskTaskRunner on `runtime.dask_address`, else a bounded thread pool."""
    if runtime.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=runtime.dask_address)
    return ThreadPoolTaskRunner(max_workers=parallel_stages(runtime))


def execute(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Run every node inside the current flow, independent ones at once; returns one summary dict per node
    (and, for a spec with a `compare:` block, the stage table's entry last)."""
    from .node_task import store_of

    store_of(spec).check_writable()
    summary = run_graph({"": spec})[""]
    if spec.compare is not None:
        summary.append(publish_stage_table(spec, summary))
    return summary


@flow(name="diffpipe", flow_run_name=run_name, log_prints=True, persist_result=True, result_serializer="json")
def pipeline_flow(spec_path: str, overrides: list[str] | None = None,
                  timeout_minutes: float | None = None) -> list[dict[str, Any]]:
    """Validate the spec at `spec_path` (with `key=value` overrides) as `diffpipe run` does and run its stages,
    cached; past `timeout_minutes` the run stops as on SIGTERM (training checkpoints where it is)."""
    spec = load_spec(spec_path, overrides)
    check_spec(spec)
    with stop_after(timeout_minutes):
        return execute(spec)


def run_pipeline(spec: PipelineSpec, spec_path: str, overrides: list[str] | None) -> list[dict[str, Any]]:
    """Run `pipeline_flow` on the task runner the spec's runtime asks for."""
    return pipeline_flow.with_options(task_runner=task_runner(spec.runtime))(spec_path=spec_path,
                                                                             overrides=overrides)

"""Pipelines as one graph of Prefect task futures: a node is submitted as soon as the nodes it reads are done.

One graph holds one pipeline (`diffpipe run`) or every cell of a sweep. A node's cache key needs the
digests of its inputs, so it is computed when they are published; nodes of different cells with the same
key (the pretrain four RL algorithms share) become one task. At most `runtime.max_parallel_stages` tasks
run at once, each with its share of the cores as torch threads. A failing node fails its descendants only;
independent nodes run on, and the summary says which failed and which never ran.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffpipe.errors import InputError, Interrupted, StageError
from diffpipe.schemas import ArtifactRef, PipelineSpec, RuntimeSpec
from diffpipe.tasks.stopping import stop_requested

from .node_task import node_task, store_of
from .plan import Node, node_key, nodes
from .signals import stop_on_signals
from .watch import link_cached


def cpu_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_stages(runtime: RuntimeSpec) -> int:
    """How many stages run at once: `runtime.max_parallel_stages`, else one per core."""
    return runtime.max_parallel_stages or cpu_cores()


def stage_threads(runtime: RuntimeSpec) -> int:
    """torch threads of each stage: `runtime.num_threads`, else the cores shared by the concurrent stages."""
    if runtime.num_threads:
        return runtime.num_threads
    if runtime.dask_address:
        return 1  # a Dask worker's cores are its own; one thread per task on 1-thread workers
    return max(1, cpu_cores() // parallel_stages(runtime))


class GraphFailed(StageError):
    """Some nodes failed: `summary` holds every node's entry (executed, cached, failed or not run).

    Its exit code is 2 (bad input) when every failure was bad input (a DataError inside a stage, say), else 1.
    """

    def __init__(self, message: str, summary: dict[str, list[dict[str, Any]]], bad_input: bool = False):
        super().__init__(message)
        self.summary = summary
        self.exit_code = 2 if bad_input else 1


@dataclass(eq=False)
class Job:
    """One node of one pipeline of the graph (`cell` is '' for a single pipeline)."""

    cell: str
    spec: PipelineSpec
    node: Node
    entry: dict[str, Any] | None = None
    ref: ArtifactRef | None = None
    error: Exception | None = None
    """The exception this job failed with (GraphFailed is raised from the first one)."""

    @property
    def bad_input(self) -> bool:
        """True when this job failed on bad input (an InputError), not inside the stage's own code."""
        return isinstance(self.error, InputError)

    @property
    def label(self) -> str:
        """The task run name: the node, prefixed by its cell in a sweep."""
        return f"{self.cell}/{self.node.name}" if self.cell else self.node.name


@dataclass(eq=False)
class Running:
    """A submitted task and the jobs (of one or several cells) waiting for its artifact."""

    key: str
    inputs: dict[str, Any]
    cached: bool
    future: Any
    jobs: list[Job] = field(default_factory=list)


def run_graph(pipelines: dict[str, PipelineSpec]) -> dict[str, list[dict[str, Any]]]:
    """Run every node of every pipeline (cell name -> spec); returns each cell's node entries, in node order.

    Raises GraphFailed (after every runnable node has finished) when a node failed, and Interrupted when the
    run was asked to stop (SIGTERM / SIGINT: running stages checkpoint, nothing new starts).
    """
    runtime = next(iter(pipelines.values())).runtime
    graph = _Graph(pipelines, parallel_stages(runtime), stage_threads(runtime))
    with stop_on_signals():  # stages run in worker threads: the flow's thread takes the signals for them
        graph.run()
    if graph.interrupted is not None:
        raise graph.interrupted
    summary = {cell: [job.entry for job in graph.jobs if job.cell == cell] for cell in pipelines}
    failed = [job for job in graph.jobs if job.entry["state"] == "failed"]
    if failed:
        bad_input = all(job.bad_input for job in failed)
        raise GraphFailed(_failure_message(graph.jobs), summary, bad_input=bad_input) from failed[0].error
    return summary


class _Graph:
    def __init__(self, pipelines: dict[str, PipelineSpec], limit: int, threads: int):
        self.jobs = [Job(cell, spec, node) for cell, spec in pipelines.items() for node in nodes(spec)]
        self.by_name = {(job.cell, job.node.name): job for job in self.jobs}
        self.limit, self.threads = limit, threads
        self.running: dict[str, Running] = {}
        self.finished: queue.Queue[str] = queue.Queue()
        self.interrupted: Interrupted | None = None

    def run(self) -> None:
        pending = list(self.jobs)
        while pending or self.running:
            pending = [job for job in pending if not self._advance(job)]
            if not self.running:
                if pending:  # cannot happen: every pending job waits on a running or finished one
                    raise RuntimeError(f"graph stalled at {[job.label for job in pending]}")
                break
            self._collect(self.running.pop(self.finished.get()))

    def _advance(self, job: Job) -> bool:
        """Settle or submit `job` if its inputs allow; True when it left the pending list."""
        if stop_requested():
            job.entry = _entry(job, "not run", error="the run was asked to stop")
            return True
        sources = [self.by_name[(job.cell, src)] for src in job.node.upstream.values()]
        broken = [s for s in sources if s.entry is not None and s.entry["state"] in ("failed", "not run")]
        if broken:
            job.entry = _entry(job, "not run", error=f"input '{broken[0].node.name}' did not build")
            return True
        if any(s.ref is None for s in sources):
            return False
        refs = {s.node.name: s.ref for s in sources}
        key, inputs = node_key(job.spec, job.node, refs)
        if key in self.running:
            self.running[key].jobs.append(job)
            return True
        if len(self.running) >= self.limit:
            return False
        self.running[key] = self._submit(job, key, inputs, refs)
        return True

    def _submit(self, job: Job, key: str, inputs: dict[str, Any], refs: dict[str, ArtifactRef]) -> Running:
        store = store_of(job.spec)
        cached = store.lookup(key, verify=job.spec.storage.verify_on_load) is not None
        upstream = {name: refs[src].model_dump(mode="json") for name, src in job.node.upstream.items()}
        task = node_task(job.node.kind).with_options(refresh_cache=not cached, task_run_name=job.label)
        future = task.submit(node=job.node.name, kind=job.node.kind, key=key,
                             pipeline=job.spec.model_dump(mode="json"), upstream=upstream, inputs=inputs,
                             threads=self.threads)
        future.add_done_callback(_notify(self.finished, key))
        return Running(key, inputs, cached, future, [job])

    def _collect(self, done: Running) -> None:
        try:
            result = done.future.result()
        except Exception as e:  # the stage failed: its jobs fail, their descendants will not run
            if isinstance(e, Interrupted) and self.interrupted is None:
                self.interrupted = e
            for job in done.jobs:
                job.entry = _entry(job, "failed", key=done.key, error=str(e) or e.__class__.__name__)
                job.error = e
            return
        store = store_of(done.jobs[0].spec)
        ref = store.lookup(done.key, verify=False)  # the index decides, whatever Prefect handed back
        if ref is None:
            raise StageError(f"stage '{done.jobs[0].node.name}': its task finished but the artifact index has no "
                             f"record for key {done.key[:12]}")
        record = store.key_record(done.key) or {}
        computed = not done.cached and bool(result.get("computed"))
        for i, job in enumerate(done.jobs):
            job.ref = ref
            state = "executed" if computed and i == 0 else "cached"
            if state == "cached":
                link_cached(job.spec, job.node.name, ref, store)
            job.entry = _entry(job, state, key=done.key, ref=ref, metrics=record.get("metrics", {}))


def _notify(finished: queue.Queue[str], key: str) -> Callable[[Any], None]:
    return lambda _future: finished.put(key)


def _entry(job: Job, state: str, key: str | None = None, ref: ArtifactRef | None = None,
           metrics: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    entry = {"name": job.node.name, "stage": job.node.kind, "state": state, "cache_key": key,
             "artifact": ref.model_dump(mode="json") if ref else None, "metrics": metrics or {}}
    if job.cell:
        entry["cell"] = job.cell
    if error is not None:
        entry["error"] = error
    return entry


def _failure_message(jobs: list[Job]) -> str:
    failed = [job for job in jobs if job.entry["state"] == "failed"]
    skipped = [job.label for job in jobs if job.entry["state"] == "not run"]
    done = [job.label for job in jobs if job.entry["state"] in ("executed", "cached")]
    parts = [f"{job.entry['error']}" if job.entry["error"].startswith("stage '") else
             f"stage '{job.label}' failed: {job.entry['error']}" for job in failed[:1]]
    if len(failed) > 1:
        parts.append("also failed: " + ", ".join(job.label for job in failed[1:]))
    parts.append("not run (they read a failed stage): " + (", ".join(skipped) or "none"))
    parts.append("finished: " + (", ".join(done) or "none"))
    return "; ".join(parts)

"""The pipeline as nodes (data, then stages) with cache keys, and what state each node is in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffpipe.schemas import ArtifactRef, PipelineSpec, StageBase
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.registry import domain_module, implementation_module, stage_module

from .cache import cache_key, explain_change, key_inputs

DATA_NODE = "data"


@dataclass
class Node:
    """One unit of cached work: the data build or one stage."""

    name: str
    kind: str
    stage: StageBase | None
    upstream: dict[str, str] = field(default_factory=dict)
    """Input name (`data`, `model`, `init`, ...) -> node name."""

    def modules(self, pipeline: PipelineSpec) -> tuple[str, ...]:
        """The root modules of this node's code version (cache.py): its data domain's, the stage's, and those of
        the implementations the stage names (objective, algorithm, method, rewards, search, the model arch)."""
        roots = [domain_module(pipeline.data.kind)]
        if self.stage is None:
            return tuple(roots)
        names = self.stage.implementations()
        if self.stage.runs_network or self.stage.builds_model:
            names.append(("arch", pipeline.model.arch))
        return (*roots, stage_module(self.kind), *(implementation_module(ns, name) for ns, name in names))


def nodes(spec: PipelineSpec) -> list[Node]:
    """The data node followed by every stage's nodes, with their upstream node names.

    A stage run as several nodes (`StageBase.expand`, e.g. self_train generations) chains them through its
    `chained_reference`; later stages that refer to it read its last node.
    """
    out = [Node(DATA_NODE, spec.data.kind, None)]
    last: dict[str, str] = {}
    for st in spec.stages:
        upstream = {"data": DATA_NODE, **{f: last.get(s, s) for f, s in spec.upstream(st).items()}}
        for name, options in st.expand():
            out.append(Node(name, st.stage, options, dict(upstream)))
            if st.chained_reference:
                upstream[st.chained_reference] = name
        last[st.name] = out[-1].name
    return out


def node_key(spec: PipelineSpec, node: Node, refs: dict[str, ArtifactRef]) -> tuple[str, dict[str, Any]]:
    """Cache key and key inputs of a node, given the artifacts of the nodes it reads."""
    upstream = {name: refs[src] for name, src in node.upstream.items()}
    inputs = key_inputs(spec, node.stage, node.modules(spec), upstream)
    return cache_key(inputs), inputs


@dataclass
class NodeStatus:
    """Where a node stands without running anything."""

    name: str
    kind: str
    state: str
    """`cached`, `stale` (run before, but its inputs changed) or `never run`."""
    key: str | None
    reasons: list[str]
    ref: ArtifactRef | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """A JSON-able dict for `--json` output."""
        return {"name": self.name, "stage": self.kind, "state": self.state, "cache_key": self.key,
                "reasons": self.reasons, "artifact": self.ref.model_dump(mode="json") if self.ref else None,
                "metrics": self.metrics}


def status(spec: PipelineSpec, store: ArtifactStore, verify: bool | None = None) -> list[NodeStatus]:
    """Per node: cached / stale / never run, and why, computed from the store alone.

    `verify` (default: the spec's `storage.verify_on_load`) checks every cached artifact's checksums;
    without it a node is cached when its key record and manifest exist.
    """
    verify = spec.storage.verify_on_load if verify is None else verify
    refs: dict[str, ArtifactRef] = {}
    out = []
    for node in nodes(spec):
        missing = [src for src in node.upstream.values() if src not in refs]
        previous = store.name_record(spec.name, node.name)
        if missing:
            state = "stale" if previous else "never run"
            out.append(NodeStatus(node.name, node.kind, state, None, [f"input '{m}' is not built" for m in missing]))
            continue
        key, inputs = node_key(spec, node, refs)
        ref = store.lookup(key, verify=verify)
        if ref is not None:
            refs[node.name] = ref
            record = store.key_record(key) or {}
            out.append(NodeStatus(node.name, node.kind, "cached", key, [], ref, record.get("metrics", {})))
        elif store.key_record(key) is not None:
            out.append(NodeStatus(node.name, node.kind, "stale", key, ["its artifact is missing or corrupt"]))
        elif previous:
            reasons = explain_change(previous.get("inputs", {}), inputs) or ["artifact removed"]
            out.append(NodeStatus(node.name, node.kind, "stale", key, reasons))
        else:
            out.append(NodeStatus(node.name, node.kind, "never run", key, ["no run with these inputs"]))
    return out

"""`diffpipe run` on a machine with `runtime.distributed.node_rank` > 0: join node 0's distributed stages.

Node 0 runs the pipeline and publishes into the store; every other node needs the same store (a
shared folder or bucket). A follower walks the same nodes: it waits until node 0 has published each
upstream artifact, starts its own launcher for every distributed training stage (its ranks join node
0's rendezvous), then waits for node 0 to publish that stage. It publishes nothing and needs no Prefect.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from diffpipe.errors import StageError
from diffpipe.schemas import ArtifactRef, PipelineSpec
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.launch import check_launch, distributes, run_launcher

from .plan import node_key, nodes

POLL_S = 1.0


def follow(spec: PipelineSpec) -> int:
    """Join every distributed training stage of the pipeline, in order; exit 0 once node 0 published the last."""
    store = ArtifactStore(spec.storage.root)
    plan = nodes(spec)
    last = max((i for i, n in enumerate(plan) if distributes(n.kind, spec.runtime)), default=-1)
    refs: dict[str, ArtifactRef] = {}
    for node in plan[: last + 1]:
        key, _ = node_key(spec, node, refs)
        ref = store.lookup(key, verify=False)
        if ref is None and distributes(node.kind, spec.runtime):
            check_launch(spec, node.name, node.kind)
            print(f"{node.name}: joining the rendezvous at {spec.runtime.distributed.rdzv_endpoint}", file=sys.stderr)
            upstream = {name: refs[src] for name, src in node.upstream.items()}
            with tempfile.TemporaryDirectory(prefix=f"diffpipe-{node.name}-follower-") as tmp:
                (Path(tmp) / "payload").mkdir()
                run_launcher(Path(tmp) / "payload", spec, node.name, node.kind, key, upstream, Path(tmp),
                             lambda line: print(line, file=sys.stderr))
            ref = wait_for(store, key, node.name, spec.runtime.distributed.rdzv_timeout_s)
        elif ref is None:
            ref = wait_for(store, key, node.name, None)
        refs[node.name] = ref
    print(f"node {spec.runtime.distributed.node_rank}: every distributed stage is published", file=sys.stderr)
    return 0


def wait_for(store: ArtifactStore, key: str, name: str, timeout_s: float | None) -> ArtifactRef:
    """The artifact node 0 publishes under `key` (within `timeout_s` seconds; None: as long as it takes)."""
    print(f"{name}: waiting for node 0 to publish it", file=sys.stderr)
    start = time.monotonic()
    while (ref := store.lookup(key, verify=False)) is None:
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise StageError(f"stage '{name}': node 0 did not publish it within {timeout_s} s of the ranks ending")
        time.sleep(POLL_S)
    return ref

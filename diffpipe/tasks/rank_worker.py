"""What every rank of a distributed training stage runs (started by torchrun from tasks/launch.py).

Each rank rebuilds the stage's context from the payload (spec, node, key, upstream artifacts), joins
the process group and runs the same stage function, hence the same `train()` loop. Rank 0 works in
the stage's staging folder and logs; the other ranks write into a private folder that is thrown
away. A failure is written to `error-<rank>.json` for the launcher's report, then re-raised. SIGTERM
or SIGINT (passed on by torchrun's agent) asks the loop to stop: the ranks agree on the step, save a
checkpoint and end with `Interrupted`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from diffpipe.errors import DiffpipeError, InputError
from diffpipe.schemas import ArtifactRef, PipelineSpec
from diffpipe.storage import ArtifactStore

from .context import StageContext, StageOutput, resolve_device
from .distributed import FsdpRefused
from .launch import LOG_PREFIX, OUTPUT_FILE, PAYLOAD_FILE, PROGRESS_PREFIX, set_parent_death_signal
from .registry import get_stage
from .stopping import request_stop


def log_line(message: str) -> None:
    """Rank 0's log line, marked for the stage's process."""
    print(LOG_PREFIX + message, flush=True)


class ProgressLines:
    """Rank 0's `on_progress` hook: one line per report with the losses since the previous one."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, step: int, steps: int, losses: list[float]) -> None:
        """Print the report for the stage's process (which keeps the whole loss list)."""
        print(PROGRESS_PREFIX + json.dumps({"step": step, "steps": steps, "losses": losses[self.sent:]}), flush=True)
        self.sent = len(losses)


def quiet(message: str) -> None:
    """The other ranks' logger: nothing."""


def join_group(spec: PipelineSpec) -> None:
    """Initialise the process group: nccl on CUDA (one GPU per local rank), gloo on the CPU."""
    device = resolve_device(spec.runtime)
    backend = spec.runtime.distributed.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=timedelta(seconds=spec.runtime.distributed.rdzv_timeout_s))


def run_rank(payload: Path) -> StageOutput:
    """Rebuild the context and run the stage on this rank."""
    doc = json.loads((payload / PAYLOAD_FILE).read_text())
    spec = PipelineSpec.model_validate(doc["pipeline"])
    torch.set_num_threads(spec.runtime.num_threads or 1)
    refs = {name: ArtifactRef.model_validate(r) for name, r in doc["inputs"].items()}
    store = ArtifactStore(spec.storage.root)
    main = dist.get_rank() == 0
    with tempfile.TemporaryDirectory(prefix=f"diffpipe-{doc['node']}-rank{dist.get_rank()}-") as private:
        workdir = Path(doc["workdir"]) if main else Path(private)
        ctx = StageContext(spec, doc["node"], doc["key"], refs, store, workdir, log=log_line if main else quiet,
                           progress=False, on_progress=ProgressLines() if main else None)
        try:
            output = get_stage(doc["kind"])(ctx)
        except FsdpRefused as e:
            raise InputError("runtime.distributed.strategy", str(e), "ddp for this model", "fsdp") from e
    if main:
        (payload / OUTPUT_FILE).write_text(json.dumps({
            "kind": output.kind, "metrics": output.metrics, "summary": output.summary,
            "images": {k: str(v) for k, v in output.images.items()}}, default=str))
    return output


@record
def main(payload: Path) -> None:
    """Join the group, run the stage, leave the group; failures are recorded for the launcher."""
    set_parent_death_signal()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the agent passes a stop on: checkpoint at the next step
        signal.signal(sig, lambda *_: request_stop())
    doc = json.loads((payload / PAYLOAD_FILE).read_text())
    join_group(PipelineSpec.model_validate(doc["pipeline"]))
    try:
        run_rank(payload)
    except Exception as e:
        error = {"message": str(e) if isinstance(e, DiffpipeError) else f"{e.__class__.__name__}: {e}"}
        if isinstance(e, InputError):
            error["input"] = {"where": e.where, "problem": e.problem, "expected": e.expected, "found": e.found}
        (payload / f"error-{dist.get_rank()}.json").write_text(json.dumps(error))
        raise
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

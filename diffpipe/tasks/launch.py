"""Start a training stage across processes with torch's elastic launcher (torchrun), as a child of the stage.

The stage's process writes a payload (spec, node, key, upstream artifacts, staging folder) and starts
`python -m diffpipe.tasks.launch PAYLOAD`, which runs `torch.distributed.run` (torchrun's own parser
and agent) with `-m diffpipe.tasks.rank_worker PAYLOAD` as every rank's program. Rank 0 leaves the
stage's outputs in the staging folder and its `StageOutput` in the payload folder; the stage's
process then publishes as for any stage. A failed rank ends the stage with a message naming it.

On the CPU "devices" are the CPU cores this process may run on (`os.sched_getaffinity`): each rank
is one process with one thread unless `runtime.num_threads` says otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffpipe.errors import InputError, Interrupted, StageError
from diffpipe.schemas import PipelineSpec, RuntimeSpec

from .context import StageContext, StageOutput, resolve_device
from .distributed import STRATEGY_ENV
from .registry import get_stage
from .stopping import stop_requested

if TYPE_CHECKING:
    from .registry import StageFn

TRAINING_STAGES = frozenset({"pretrain", "midtrain", "distill", "rl", "neural_sampler"})
"""Stage kinds that run the shared training loop, and so may run across processes."""

PAYLOAD_FILE, OUTPUT_FILE, FAILURE_FILE = "payload.json", "output.json", "failure.json"
LOG_PREFIX = "diffpipe-log: "
"""Rank 0 prints its log lines with this prefix; the stage's process passes them to its logger."""
PROGRESS_PREFIX = "diffpipe-progress: "
"""Rank 0's progress lines: JSON of the step, the steps and the losses since its previous line."""


def distributes(kind: str, runtime: RuntimeSpec) -> bool:
    """Whether stages of `kind` run across processes under `runtime`."""
    return kind in TRAINING_STAGES and runtime.distributed.world_size > 1


def stage_function(kind: str, runtime: RuntimeSpec) -> StageFn:
    """The function that runs a stage of `kind`: the stage itself, or its launch across processes."""
    return partial(launch, kind=kind) if distributes(kind, runtime) else get_stage(kind)


def launch(ctx: StageContext, kind: str) -> StageOutput:
    """Run the stage on every rank; rank 0's outputs land in `ctx.workdir`."""
    check_launch(ctx.pipeline, ctx.node, kind)
    with tempfile.TemporaryDirectory(prefix=f"diffpipe-{ctx.node}-ranks-") as tmp:
        payload = Path(tmp)
        run_launcher(payload, ctx.pipeline, ctx.node, kind, ctx.key, ctx.inputs, ctx.workdir, ctx.log,
                     ctx.report_progress)
        out = json.loads((payload / OUTPUT_FILE).read_text())
    return StageOutput(out["kind"], out["metrics"], out["summary"], {k: Path(v) for k, v in out["images"].items()})


def check_launch(spec: PipelineSpec, node: str, kind: str) -> None:
    """Refuse bad settings before any process starts: too many processes, nccl off CUDA, FSDP2 under MARBLE, uneven
    batches."""
    dist = spec.runtime.distributed
    device = resolve_device(spec.runtime)
    available = torch.cuda.device_count() if device.type == "cuda" else len(os.sched_getaffinity(0))
    what = "GPUs" if device.type == "cuda" else "usable CPU cores"
    if dist.nproc_per_node > available:
        raise InputError("runtime.distributed.nproc_per_node", f"more processes than {what} on this machine",
                         f"at most {available}", str(dist.nproc_per_node))
    if dist.backend == "nccl" and device.type != "cuda":
        raise InputError("runtime.distributed.backend", "nccl runs collectives on CUDA devices only",
                         "gloo or auto on the CPU", "nccl")
    index = spec.stage_index(node)
    if getattr(spec.stages[index], "combine", None) == "marble" and dist.strategy == "fsdp":
        raise InputError("runtime.distributed.strategy", f"stage '{node}' combines rewards with MARBLE, which "
                         "differentiates each reward's loss by the policy's parameters, and FSDP2 holds them sharded",
                         "ddp", "fsdp")
    groups = getattr(spec.stages[index], "groups_per_step", None)
    if kind == "rl" and groups % dist.world_size:
        raise InputError(f"stages[{index}].groups_per_step", f"each of the {dist.world_size} processes rolls out "
                         "whole groups", f"a multiple of {dist.world_size}", str(groups))
    for name in ("batch_size", "samples_per_step"):  # samples_per_step: a neural sampler's loss batch
        batch = getattr(spec.stages[index], name, None)
        if batch is not None and batch % dist.world_size:
            raise InputError(f"stages[{index}].{name}", f"the global batch must split evenly over "
                             f"{dist.world_size} processes", f"a multiple of {dist.world_size}", str(batch))


def run_launcher(payload: Path, spec: PipelineSpec, node: str, kind: str, key: str, inputs: dict[str, Any],
                 workdir: Path, log: Callable[[str], None],
                 progress: Callable[[int, int, list[float]], None] | None = None) -> None:
    """Start the launcher child, pass rank 0's log and progress lines on, turn a failure into a one-line error."""
    doc = {"pipeline": spec.model_dump(mode="json"), "node": node, "kind": kind, "key": key,
           "inputs": {n: r.model_dump(mode="json") for n, r in inputs.items()}, "workdir": str(workdir)}
    (payload / PAYLOAD_FILE).write_text(json.dumps(doc))
    threads = spec.runtime.num_threads or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), STRATEGY_ENV: spec.runtime.distributed.strategy,
           "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=30)
    proc = subprocess.Popen([sys.executable, "-m", "diffpipe.tasks.launch", str(payload)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threading.Thread(target=_pass_stop_on, args=(proc,), daemon=True).start()
    losses: list[float] = []
    try:
        for line in proc.stdout:
            if line.startswith(LOG_PREFIX):
                log(line[len(LOG_PREFIX):].rstrip())
            elif line.startswith(PROGRESS_PREFIX) and progress is not None:
                report = json.loads(line[len(PROGRESS_PREFIX):])
                losses += report["losses"]
                progress(report["step"], report["steps"], losses)
            else:
                tail.append(line.rstrip())
        code = proc.wait()
    finally:
        _stop(proc)
    if code != 0:
        raise failure_error(payload, spec, node, kind, code, tail[-1] if tail else "")


def ended(code: int) -> str:
    """How a process with exit status `code` ended, in words."""
    return f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exited with code {code}"


def _pass_stop_on(proc: subprocess.Popen) -> None:
    """A stop request of this run (SIGTERM / SIGINT) goes to the launcher, whose agent passes it to every rank."""
    while proc.poll() is None:
        if stop_requested():
            proc.send_signal(signal.SIGTERM)
            return
        time.sleep(0.2)


def failure_error(payload: Path, spec: PipelineSpec, node: str, kind: str, code: int, last_line: str) -> Exception:
    """The error a failed launch ends the stage with, from what the launcher and the ranks left behind."""
    dist = spec.runtime.distributed
    if stop_requested():
        main = payload / "error-0.json"
        stopped = json.loads(main.read_text())["message"] if main.exists() else f"{node}: stopped"
        return Interrupted(f"{stopped} (on every rank)")
    path = payload / FAILURE_FILE
    if not path.exists():
        return StageError(f"stage '{node}' ({kind}): the launcher (torchrun's agent) {ended(code)}, its ranks with it "
                          f"(last output: {last_line or 'none'}); rerun to resume from the newest checkpoint")
    failure = json.loads(path.read_text())
    if "rendezvous" in failure:
        return InputError("runtime.distributed.rdzv_endpoint", f"the rendezvous could not be completed within "
                          f"{dist.rdzv_timeout_s} s ({failure['rendezvous']})", "every node's launcher joining",
                          repr(dist.rdzv_endpoint))
    error = failure.get("error")
    if error and error.get("input"):
        return InputError(**error["input"])
    where = f"rank {failure['rank']} of {dist.world_size} (node {failure['node']}, local rank {failure['local_rank']})"
    cause = f"failed: {error['message']}" if error else ended(failure["exitcode"])
    return StageError(f"stage '{node}' ({kind}): {where} {cause}; rerun to resume from the newest checkpoint")


def _stop(proc: subprocess.Popen) -> None:
    """End the launcher if it still runs (the stage's process was interrupted); its agent stops the ranks."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def torchrun_args(spec: PipelineSpec, key: str, payload: Path) -> list[str]:
    """torchrun's command line for this stage: one agent per node, no restarts, a bounded rendezvous."""
    dist = spec.runtime.distributed
    args = ["--nnodes", str(dist.nnodes), "--nproc-per-node", str(dist.nproc_per_node),
            "--node-rank", str(dist.node_rank), "--max-restarts", "0", "--monitor-interval", "0.2"]
    if dist.rdzv_endpoint is None:
        args.append("--standalone")
    else:
        timeout = dist.rdzv_timeout_s
        args += ["--rdzv-backend", "c10d", "--rdzv-endpoint", dist.rdzv_endpoint, "--rdzv-id", key[:32],
                 "--rdzv-conf", f"join_timeout={timeout},read_timeout={timeout}"]
    return [*args, "-m", "diffpipe.tasks.rank_worker", str(payload)]


def set_parent_death_signal() -> None:
    """Linux: this process gets SIGKILL when its parent dies, so no rank outlives a killed stage."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def root_failure(error: Any) -> tuple[int, Any]:
    """The failed rank a ChildFailedError should be reported as: one killed by a signal (its peers then fail on the
    broken connection, and on a busy machine one of them can be recorded first), else the first to fail."""
    killed = sorted((failure.timestamp, rank) for rank, failure in error.failures.items() if failure.exitcode < 0)
    if killed:
        rank = killed[0][1]
        return rank, error.failures[rank]
    return error.get_first_failure()


def main(payload: Path) -> int:
    """The launcher child: torchrun's agent for this node; a failure is written to `failure.json`."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import parse_args, run

    set_parent_death_signal()
    doc = json.loads((payload / PAYLOAD_FILE).read_text())
    spec = PipelineSpec.model_validate(doc["pipeline"])
    try:
        run(parse_args(torchrun_args(spec, doc["key"], payload)))
    except ChildFailedError as e:
        rank, failure = root_failure(e)
        per_node = spec.runtime.distributed.nproc_per_node
        error = payload / f"error-{rank}.json"
        _write(payload / FAILURE_FILE, {"rank": rank, "node": rank // per_node, "local_rank": failure.local_rank,
                                        "exitcode": failure.exitcode,
                                        "error": json.loads(error.read_text()) if error.exists() else None})
        return 1
    except RendezvousError as e:
        _write(payload / FAILURE_FILE, {"rendezvous": f"{e.__class__.__name__}: {e}"})
        return 1
    return 0


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc))


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

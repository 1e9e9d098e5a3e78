"""What a stage function receives (Prefect-free): spec, inputs, store, device, logger, staging folder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffpipe.errors import Interrupted
from diffpipe.schemas import ArtifactKind, ArtifactRef, PipelineSpec, RuntimeSpec
from diffpipe.storage import ArtifactStore

from .stopping import stop_reason, stop_requested

log = logging.getLogger("diffpipe")

ProgressBars = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
"""`bars(what, total)`: a progress bar over `total` units of `what` that yields `advance(n)`: what data builders
take to show their progress (`StageContext.progress_bar` inside a stage, `no_progress` elsewhere)."""


@contextmanager
def no_progress(what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar that shows nothing (builders called outside a stage: tests, benchmarks)."""
    yield lambda n: None


@dataclass
class StageOutput:
    """What a stage leaves in its staging folder, plus what the UI should show."""

    kind: ArtifactKind
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    images: dict[str, Path] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage function may use; stages never see Prefect."""

    pipeline: PipelineSpec
    node: str
    key: str
    inputs: dict[str, ArtifactRef]
    store: ArtifactStore
    workdir: Path
    log: Callable[[str], None] = log.info
    progress: bool = True
    on_progress: Callable[[int, int, list[float]], None] | None = None
    """Live progress for the UI: called by training loops every `log_every` steps with (step, steps, losses)."""

    on_work: Callable[[str, int, int], None] | None = None
    """Live progress of other long work (sampling, data builds, evaluation): called with (what, done, total)."""

    @contextmanager
    def progress_bar(self, what: str, total: int) -> Iterator[Callable[[int], None]]:
        """A terminal bar over `total` units of `what` (tqdm) that also reaches `on_work` (the Prefect UI);
        yields `advance(n)`, which raises Interrupted once the run was asked to stop (SIGTERM / SIGINT): the
        stage ends at that unit, its staging folder is removed and nothing is published."""
        from tqdm.auto import tqdm

        bar, done = tqdm(total=total, desc=f"{self.node}: {what}", disable=not self.progress, leave=False), 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            bar.update(n)
            if self.on_work is not None:
                self.on_work(what, done, total)
            if stop_requested():
                raise Interrupted(f"{self.node}: {stop_reason()}: stopped after {done}/{total} {what}; nothing "
                                  "published, rerun to compute it")

        try:
            yield advance
        finally:
            bar.close()

    def report_progress(self, step: int, steps: int, losses: list[float]) -> None:
        """Tell whoever watches (the Prefect UI) how far training is; a no-op when nobody does."""
        if self.on_progress is not None:
            self.on_progress(step, steps, losses)

    def field_path(self, field: str) -> str:
        """Spec path of a field of the stage this node runs, e.g. `stages[1].metrics` (`PipelineSpec.field_path`)."""
        return self.pipeline.field_path(self.node, field)

    def input_path(self, name: str) -> Path:
        """Local folder of the input artifact bound to `name` (`data`, `model`, `init`, ...)."""
        return self.store.local_path(self.inputs[name])

    def input_timings(self, name: str, file: str = "metrics.json") -> dict[str, Any]:
        """Run facts (wall times, speeds) the input artifact `name` recorded in `file`, kept in its manifest's
        lineage because they are not part of its content (`diffpipe.flows.timings`); empty when none."""
        lineage = self.store.manifest(self.inputs[name].sha256).get("lineage", {})
        return dict(lineage.get("timings", {}).get(file, {}))

    @property
    def runtime(self) -> RuntimeSpec:
        """The pipeline's runtime settings."""
        return self.pipeline.runtime

    @property
    def device(self) -> torch.device:
        """The device stages compute on."""
        return resolve_device(self.runtime)

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on CUDA when the precision asks for it, else nothing."""
        if self.device.type == "cuda" and resolve_precision(self.runtime) == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the runtime seed plus `offset`."""
        return torch.Generator().manual_seed(self.runtime.seed + offset)


def resolve_device(runtime: RuntimeSpec) -> torch.device:
    """`auto` means CUDA when available, else CPU."""
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(runtime.device)


def resolve_precision(runtime: RuntimeSpec) -> str:
    """`auto` means bf16 on CUDA and fp32 on the CPU."""
    if runtime.precision == "auto":
        return "bf16" if resolve_device(runtime).type == "cuda" else "fp32"
    return runtime.precision

"""Live progress in the Prefect UI: training (a progress artifact, the loss curve and table as training runs)
and other long work (sampling, data builds, evaluation: one progress artifact each).

`LiveProgress` is the `StageContext.on_progress` hook of a node's task. Its progress artifact is updated on
every call (every `log_every` steps); the loss table and the markdown loss curve are published again at
most every `REDRAW_S` seconds, and at the last step, under the same keys, so the UI always shows the newest.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from .ui import artifact_slug, image_markdown

REDRAW_S = 10.0
"""Seconds between redraws of a training stage's loss table and curve."""
UPDATE_S = 1.0
"""Seconds between updates of a work progress artifact."""


class LiveProgress:
    """Publishes a training stage's progress under keys `<prefix>-progress`, `-loss-table`, `-loss-curve`."""

    def __init__(self, prefix: str, node: str):
        self.prefix, self.node = prefix, node
        self.artifact: UUID | None = None
        self.drawn_at = -REDRAW_S

    def __call__(self, step: int, steps: int, losses: list[float]) -> None:
        """Report `step` of `steps` done, with the per-step losses so far."""
        pct = 100.0 * step / steps
        text = f"{self.node}: step {step}/{steps}, loss {losses[-1]:.4f}"
        if self.artifact is None:
            self.artifact = create_progress_artifact(pct, key=f"{self.prefix}-progress", description=text)
        else:
            update_progress_artifact(self.artifact, pct, description=text)
        now = time.monotonic()
        if step == steps or now - self.drawn_at >= REDRAW_S:
            self.drawn_at = now
            self._draw(step, steps, losses)

    def _draw(self, step: int, steps: int, losses: list[float]) -> None:
        from diffpipe.tasks.training import plot_losses

        every = max(1, len(losses) // 20)
        rows = [{"step": i + 1, "loss": losses[i]} for i in range(every - 1, len(losses), every)]
        create_table_artifact(rows, key=f"{self.prefix}-loss-table", description=f"{self.node}: loss, live")
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_losses(losses, Path(tmp) / "loss.png", f"{self.node}: step {step}/{steps}")
            md = f"## {self.node}: step {step}/{steps}\n\n" + image_markdown("loss", png)
        create_markdown_artifact(md, key=f"{self.prefix}-loss-curve", description=f"{self.node}: loss curve, live")


class WorkProgress:
    """Publishes the progress of a stage's other long work (`StageContext.on_work`: sampling, data builds,
    evaluation) under `<prefix>-<what>-progress`: created at the first report, then updated at most every
    `UPDATE_S` seconds and at the last unit, so a bar over thousands of units costs a few API calls."""

    def __init__(self, prefix: str, node: str):
        self.prefix, self.node = prefix, node
        self.artifacts: dict[str, UUID] = {}
        self.updated_at: dict[str, float] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        """Report `done` of `total` units of `what`."""
        pct, text = 100.0 * done / max(1, total), f"{self.node}: {what} {done}/{total}"
        now = time.monotonic()
        if what not in self.artifacts:
            self.artifacts[what] = create_progress_artifact(pct, key=f"{self.prefix}-{artifact_slug(what)}-progress",
                                                            description=text)
        elif done >= total or now - self.updated_at[what] >= UPDATE_S:
            update_progress_artifact(self.artifacts[what], pct, description=text)
        else:
            return
        self.updated_at[what] = now

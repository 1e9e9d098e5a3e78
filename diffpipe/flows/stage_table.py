"""The stage table of a pipeline with a `compare:` block, built from the run's node entries after every run.

One row per `compare.rows` entry (schemas/compare.py): the quality and reward metrics of its evaluate
stage, the costs of the sample stage it scored (NFE per sample, FLOPs per evaluation, sampling FLOPs,
search, the stage's wall time), and the training stage's steps, FLOPs and wall time. Nothing is
recomputed: every number is one the stages recorded (their index records keep the run facts, wall times
and energy, that the hashed metrics files leave out). The table is published as a Prefect table artifact
(and a markdown one) and as `stage_table.json`, a `metrics` artifact of the store, and is returned as one
more node entry (`stage: compare`) of the run's summary.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from diffpipe.schemas import PipelineSpec

from .ui import flatten

TABLE_FILE = "stage_table.json"
TRAIN_COLUMNS = {"train_steps": "steps", "train_flops": "train_flops", "train_wall_s": "train_wall_s"}
"""Column -> metric of the training stage."""
SAMPLE_COLUMNS = {"nfe_per_sample": "nfe_per_sample", "flops_per_evaluation": "flops_per_evaluation",
                  "sampling_flops": "sampling_flops", "sampling_wall_s": "stage_wall_s", "search": "search"}
"""Column -> metric of the sample stage the row's evaluate stage scored."""


def metric_at(metrics: dict[str, Any], path: str) -> Any:
    """The value at dotted `path` of nested metrics (None when absent)."""
    return flatten(metrics).get(path)


def table_rows(spec: PipelineSpec, entries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per row of the table, from the node entries of a run by stage name."""
    rows, compare = [], spec.compare
    for row in compare.rows:
        evaluated = entries[row.evaluate]["metrics"]
        costs = entries[spec.stage(row.evaluate).samples]["metrics"]
        trained = entries[row.train]["metrics"] if row.train else {}
        out: dict[str, Any] = {"row": row.label, "train_stage": row.train, "evaluate_stage": row.evaluate}
        out.update({q: metric_at(evaluated, q) for q in compare.quality})
        if compare.reward is not None:
            out[f"reward ({compare.reward})"] = metric_at(evaluated, compare.reward)
        out.update({column: costs.get(name) for column, name in SAMPLE_COLUMNS.items()})
        out.update({column: trained.get(name) for column, name in TRAIN_COLUMNS.items()})
        rows.append(out)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table in markdown (numbers to 4 significant digits)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def publish_stage_table(spec: PipelineSpec, summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Build the table of `spec.compare` from a run's node entries, publish it (store + UI); its node entry."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from .node_task import store_of
    from .watch import artifact_prefix

    rows = table_rows(spec, {e["name"]: e for e in summary})
    store = store_of(spec)
    with tempfile.TemporaryDirectory(prefix="diffpipe-stage-table-") as tmp:
        Path(tmp, TABLE_FILE).write_text(json.dumps({"pipeline": spec.name, "rows": rows}, indent=2) + "\n")
        ref = store.publish(Path(tmp), "metrics", {"pipeline": spec.name, "node": "compare", "kind": "compare",
                                                   "rows": [r.label for r in spec.compare.rows]})
    slug = artifact_prefix(spec, "compare")
    create_table_artifact(rows, key=f"{slug}-table", description=f"{spec.name}: stages compared")
    create_markdown_artifact(f"## {spec.name}: stages compared\n\n{markdown(rows)}\n\n- artifact: `{store.uri(ref)}`",
                             key=f"{slug}-summary", description=f"{spec.name}: stage table")
    return {"name": "compare", "stage": "compare", "state": "executed", "cache_key": None,
            "artifact": ref.model_dump(mode="json"), "metrics": {"rows": rows}}

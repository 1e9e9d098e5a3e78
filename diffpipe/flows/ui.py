"""What the Prefect UI shows of a stage: a metrics table and a markdown summary (artifacts)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

if TYPE_CHECKING:
    from diffpipe.schemas import ArtifactRef, PipelineSpec
    from diffpipe.storage import ArtifactStore
    from diffpipe.tasks.context import StageOutput


def image_markdown(title: str, path: Path) -> str:
    """A markdown image with the PNG inlined as a data URI (the UI runs offline, no image server)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"**{title}**\n\n![{title}](data:image/png;base64,{data})\n"


def artifact_slug(text: str) -> str:
    """A Prefect artifact key made of lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def publish_stage_artifacts(spec: PipelineSpec, node: str, kind: str, ref: ArtifactRef, store: ArtifactStore,
                            output: StageOutput, workdir: Path, wall: float) -> None:
    """The stage's metrics table and markdown summary (location, digest, files, images) as Prefect artifacts."""
    from .watch import artifact_prefix

    slug = artifact_prefix(spec, node)
    rows = [{"metric": k, "value": v} for k, v in flatten(output.metrics).items()]
    if rows:
        create_table_artifact(rows, key=f"{slug}-metrics", description=f"{node} ({kind}) metrics")
    location = store.uri(ref)
    files = sorted(p.relative_to(workdir).as_posix() for p in workdir.iterdir())
    md = [f"## {node} ({kind})", output.summary, "",
          f"- artifact: `{location}`", f"- kind: {ref.kind}, sha256 `{ref.sha256}`, {ref.nbytes / 1e6:.2f} MB",
          f"- wall time: {wall:.1f} s", f"- files: {', '.join(f'`{f}`' for f in files)}", ""]
    md += [image_markdown(title, path) for title, path in output.images.items()]
    create_markdown_artifact("\n".join(md), key=f"{slug}-summary", description=f"{node} ({kind}) summary")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def publish_comparison_artifacts(sweep: str, report: dict[str, Any], images: dict[str, Path]) -> None:
    """A sweep's comparison as a Prefect table artifact (one row per group) and a markdown one with plots."""
    from .comparison import markdown_table

    slug = artifact_slug(f"{sweep}-sweep")
    rows = [{**{p: str(g["params"][p]) for p in report["parameters"]}, "seeds": len(g["seeds"]),
             **{m: f"{s['mean']:.4g} ± {s['std']:.2g}" for m, s in g["metrics"].items() if m in report["headline"]}}
            for g in report["groups"]]
    create_table_artifact(rows, key=f"{slug}-table", description=f"sweep {sweep}: mean ± std over seeds")
    md = [f"## sweep {sweep}", f"{len(report['cells'])} cells, {len(report['groups'])} settings", "",
          markdown_table(report), ""]
    md += [image_markdown(metric, path) for metric, path in images.items()]
    create_markdown_artifact("\n".join(md), key=f"{slug}-comparison", description=f"sweep {sweep} comparison")

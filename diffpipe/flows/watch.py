"""What lets a person tell a team's runs apart in the Prefect UI and follow them: run names, artifact keys,
the run that computed a cached stage.

- A flow run is named from the spec's `name`, its overrides and its variant, e.g.
  `digits stages.pretrain.lr=1e-4 [3f2a9c1e]`.
- The variant is a short hash of the validated spec (storage excluded): reruns of one variant line up as
  versions of the same UI artifacts, and different overrides never overwrite each other's.
- Every published artifact records the Prefect flow run and task run that computed it; a cached stage
  publishes a link to that run and the artifact's absolute URI.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from prefect.artifacts import create_markdown_artifact

from diffpipe.schemas import ArtifactRef, PipelineSpec
from diffpipe.storage import ArtifactStore

from .cache import canonical_json, sha256_text


def variant(spec: PipelineSpec) -> str:
    """Eight hex digits naming the spec after overrides and defaults (its storage root aside)."""
    return sha256_text(canonical_json(spec.model_dump(mode="json", exclude={"storage"})))[:8]


def artifact_prefix(spec: PipelineSpec, node: str) -> str:
    """The key prefix of a node's UI artifacts: `<pipeline>-<variant>-<node>` in Prefect's key alphabet."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{spec.name}-{variant(spec)}-{node}".lower()).strip("-")


def run_name() -> str:
    """The flow run's name from its parameters: pipeline name, overrides, variant (the spec path if it fails)."""
    from prefect.runtime import flow_run

    from .spec_loading import load_spec

    params = flow_run.parameters
    overrides = list(params.get("overrides") or [])
    try:
        spec = load_spec(params["spec_path"], overrides)
    except Exception:  # the flow itself reports why the spec is bad; the name only needs to exist
        return str(params.get("spec_path", "diffpipe"))
    return " ".join([spec.name, *overrides, f"[{variant(spec)}]"])


def computed_by() -> dict[str, Any]:
    """The Prefect flow run and task run computing now (recorded in an artifact's lineage)."""
    from prefect.runtime import flow_run, task_run
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    page = run_page(base, flow_run.id) if base and base.startswith("http") and flow_run.id else None
    return {"flow_run_id": flow_run.id, "flow_run_name": flow_run.name, "task_run_id": task_run.id,
            "ui_url": page}


def run_page(ui_url: str, flow_run_id: str) -> str:
    """A flow run's page in the UI the server opens by default: V2 (`/v2/runs/flow-run/ID`) unless it serves V1.

    Prefect's own `flow_run.ui_url` is V1's address (`/flow-runs/flow-run/ID`), which opens the old UI."""
    ui = _ui_settings(ui_url.rstrip("/"))
    v1, v2 = (ui.get("v1_base_url") or "/").rstrip("/"), ui.get("v2_base_url")
    if ui.get("default_ui", "v2") == "v2" and v2 and v2.startswith(v1):
        return f"{ui_url.rstrip('/')}{v2[len(v1):].rstrip('/')}/runs/flow-run/{flow_run_id}"
    return f"{ui_url.rstrip('/')}/flow-runs/flow-run/{flow_run_id}"


@functools.cache
def _ui_settings(ui_url: str) -> dict[str, Any]:
    """The server's `/ui-settings` (which UI it serves by default, and where); empty when it does not answer."""
    import httpx

    try:
        r = httpx.get(f"{ui_url}/ui-settings", timeout=5)
        r.raise_for_status()
        return r.json()
    except (httpx.HTTPError, ValueError):
        return {}


def link_cached(spec: PipelineSpec, node: str, ref: ArtifactRef, store: ArtifactStore) -> None:
    """A markdown artifact for a cached stage: where its artifact is and the run that computed it."""
    try:
        lineage = store.manifest(ref.sha256).get("lineage", {})
    except FileNotFoundError:
        lineage = {}
    run = lineage.get("prefect") or {}
    if run.get("ui_url"):
        by = f"[{run.get('flow_run_name') or run['flow_run_id']}]({run['ui_url']})"
    else:
        by = f"flow run `{run['flow_run_id']}`" if run.get("flow_run_id") else "a run before runs were recorded"
    md = [f"## {node}: cached", "", f"- artifact: `{store.uri(ref)}`",
          f"- kind: {ref.kind}, sha256 `{ref.sha256}`, {ref.nbytes / 1e6:.2f} MB",
          f"- computed by {by} at {lineage.get('created', '?')}"]
    create_markdown_artifact("\n".join(md), key=f"{artifact_prefix(spec, node)}-cached",
                             description=f"{node}: cached, computed by an earlier run")

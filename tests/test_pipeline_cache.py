"""A tiny digits pipeline through the real Prefect flow: what runs cold, warm, and after changes, and the progress
it publishes."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from diffpipe.flows.plan import status
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.schemas import PipelineSpec
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import read_json

pytestmark = pytest.mark.slow


def _executed(summary: dict[str, dict]) -> set[str]:
    return {name for name, entry in summary.items() if entry["state"] == "executed"}


def test_cache_hits_and_invalidation(tiny_spec: dict, run_pipeline, caplog: pytest.LogCaptureFixture) -> None:
    everything = {"data", "pretrain", "sample", "evaluate"}
    assert _executed(run_pipeline(tiny_spec)) == everything
    assert _executed(run_pipeline(tiny_spec)) == set()

    spec = validate_spec(copy.deepcopy(tiny_spec))
    store = ArtifactStore(spec.storage.root)
    assert {r.name: r.state for r in status(spec, store)} == dict.fromkeys(everything, "cached")

    changed_eval = copy.deepcopy(tiny_spec)
    changed_eval["stages"][2]["sw_projections"] = 64
    assert _executed(run_pipeline(changed_eval)) == {"evaluate"}

    changed_lr = copy.deepcopy(tiny_spec)
    changed_lr["stages"][0]["lr"] = 5e-4
    stale = {r.name: (r.state, r.reasons) for r in status(validate_spec(copy.deepcopy(changed_lr)), store)}
    assert stale["data"][0] == "cached" and stale["pretrain"][0] == "stale"
    assert any("lr" in reason for reason in stale["pretrain"][1])
    assert _executed(run_pipeline(changed_lr)) == {"pretrain", "sample", "evaluate"}

    renamed = copy.deepcopy(tiny_spec)  # a stage's name is not part of its key
    renamed["stages"][2]["name"] = "score"
    assert _executed(run_pipeline(renamed)) == set()

    # corrupt the checkpoint: detected, warned about, recomputed
    ref = next(r.ref for r in status(spec, store) if r.name == "pretrain")
    weights = next(store.local_path(ref).glob("model/*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    with caplog.at_level(logging.WARNING):
        states = run_pipeline(tiny_spec)
    assert "pretrain" in _executed(states) and "data" not in _executed(states)
    assert "recomputed" in caplog.text


def test_checkpoint_loads_with_diffusers(tiny_spec: dict, run_pipeline, capfd: pytest.CaptureFixture[str]) -> None:
    run_pipeline(tiny_spec)
    spec = validate_spec(copy.deepcopy(tiny_spec))
    assert_progress_published(spec, capfd.readouterr().err)
    store = ArtifactStore(spec.storage.root)
    rows = {r.name: r for r in status(spec, store)}
    folder = store.local_path(rows["pretrain"].ref)
    model = UNet2DModel.from_pretrained(folder / "model")
    assert model.config.num_class_embeds == 11 and (folder / "scheduler" / "scheduler_config.json").exists()
    x = torch.randn(2, 1, 8, 8)
    assert model(x, torch.tensor([10.0, 900.0]), class_labels=torch.tensor([3, 10])).sample.shape == x.shape
    samples = store.local_path(rows["sample"].ref)
    assert (samples / "grid.png").stat().st_size > 1000 and (samples / "samples.zarr").is_dir()
    metrics = read_json(store.local_path(rows["evaluate"].ref) / "metrics.json")
    for key in ("mmd2", "sliced_wasserstein", "frechet_distance", "classifier_accuracy"):
        assert key in metrics["model"] and key in metrics["data_floor"]
    assert metrics["data_floor"]["classifier_accuracy"] > 0.9
    lineage = store.manifest(rows["sample"].ref.sha256)["lineage"]
    assert lineage["upstream"]["model"] == rows["pretrain"].ref.sha256


def test_memory_root_runs(tiny_spec: dict, run_pipeline, tmp_path: Path) -> None:
    raw = copy.deepcopy(tiny_spec)
    raw["storage"]["root"] = "memory://diffpipe-test-pipeline"
    raw["stages"] = raw["stages"][:1]
    raw["stages"][0]["steps"] = 4
    assert _executed(run_pipeline(raw)) == {"data", "pretrain"}
    assert _executed(run_pipeline(raw)) == set()


def test_status_names_a_library_version_change(tiny_spec: dict) -> None:
    from diffpipe.flows.cache import library_versions
    from diffpipe.flows.plan import node_key, nodes

    spec = validate_spec(copy.deepcopy(tiny_spec))
    store = ArtifactStore(spec.storage.root)
    data = nodes(spec)[0]
    key, inputs = node_key(spec, data, {})
    assert inputs["libraries"] == library_versions("digits")
    assert set(inputs["libraries"]) == {"torch", "diffusers", "numpy", "scikit-learn"}
    built_with = {**inputs, "libraries": {**inputs["libraries"], "torch": "2.12.0"}}
    store.record_name(spec.name, "data", {"key": "0" * 64, "inputs": built_with})  # as an older torch left it
    (row,) = [r for r in status(spec, store) if r.name == "data"]
    assert row.state == "stale" and row.key == key
    assert row.reasons == [f"library torch changed: 2.12.0 -> {inputs['libraries']['torch']}"]


def assert_progress_published(spec: PipelineSpec, terminal: str) -> None:
    """The data build's classifier epochs and the evaluation's scored sets, each a progress artifact at 100 % in
    the Prefect API and a bar in the terminal."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from diffpipe.flows.watch import artifact_prefix

    wanted = {f"{artifact_prefix(spec, 'data')}-classifier-epochs-progress": "data: classifier epochs 400/400",
              f"{artifact_prefix(spec, 'evaluate')}-sample-sets-scored-progress": "evaluate: sample sets scored 2/2"}
    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(wanted))))
    assert {a.key: (a.type, a.data, a.description) for a in found} == {
        key: ("progress", 100.0, text) for key, text in wanted.items()}
    assert "data: classifier epochs" in terminal and "evaluate: sample sets scored" in terminal

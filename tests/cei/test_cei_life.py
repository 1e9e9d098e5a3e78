"""pipelines/cei_life.yaml shrunk to seconds and run end to end: the atom transformer's whole life, one table."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from distributed import LocalCluster  # noqa: E402
from tiny_specs import run_spec  # noqa: E402

from diffpipe.schemas import ArtifactRef  # noqa: E402
from diffpipe.storage import ArtifactStore  # noqa: E402
from diffpipe.storage.formats import read_json  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY_TRAINING = {"steps": 3, "batch_size": 8, "checkpoint_every": 3, "log_every": 1, "warmup_steps": 0}


def quick_cei_life(root: Path, dask_address: str) -> dict:
    """The shipped CEI life with 2-3 atom molecules, a 16-wide network, a few steps per stage, 4 events."""
    spec = yaml.safe_load((REPO / "pipelines" / "cei_life.yaml").read_text())
    spec["data"].update(max_atoms=3, elements=["H", "C", "N", "O"], geometries_per_molecule=4,
                        events_per_chunk=16, test_fraction=0.3, distortion_probability=0.0)
    spec["model"] = {"arch": "atom_transformer", "width": 16, "depth": 1, "heads": 2}
    for stage in spec["stages"]:
        if stage["stage"] in ("pretrain", "midtrain", "distill"):
            stage.update(TINY_TRAINING)
        if stage["stage"] == "midtrain":
            stage["solver_steps"] = 4
        if stage["stage"] == "rl":
            stage.update(steps=2, group_size=2, groups_per_step=2, checkpoint_every=2, log_every=1)
        if stage["stage"] == "sample":
            stage.update(num_samples=4, samples_per_condition=2, batch_size=8)
        if stage.get("search"):
            stage["search"]["particles"] = 2
    spec["storage"] = {"root": str(root)}
    spec["runtime"] = {"device": "cpu", "seed": 0, "dask_address": dask_address, "num_threads": 1}
    return spec


def test_the_cei_life_runs_end_to_end_and_its_table_lists_every_stage(tmp_path: Path, prefect_api) -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        raw = quick_cei_life(tmp_path, cluster.scheduler_address)
        nodes = run_spec(raw)
    assert all(e["state"] == "executed" for e in nodes.values())
    store = ArtifactStore(str(tmp_path))
    rl = store.local_path(ArtifactRef.model_validate(nodes["rl"]["artifact"]))
    assert read_json(rl / "training.json")["objective"] == {"kind": "flow_map"}
    assert nodes["sample_rl"]["metrics"]["nfe_per_sample"] == 2
    assert nodes["sample_search"]["metrics"]["nfe_per_sample"] == 2 * 2
    rows = nodes["compare"]["metrics"]["rows"]
    assert [r["row"] for r in rows] == [r["label"] for r in raw["compare"]["rows"]]
    for row, spec_row in zip(rows, raw["compare"]["rows"], strict=True):
        overall = nodes[spec_row["evaluate"]]["metrics"]["sample"]["overall"]
        assert row["sample.overall.mae_frame_bohr"] == overall["mae_frame_bohr"]
        assert row["reward (sample.overall.momentum_rel_error)"] == overall["momentum_rel_error"]
        assert np.isfinite(row["sample.overall.mae_frame_bohr"]) and row["sampling_flops"] > 0
        assert (row["train_flops"] is None) == (spec_row.get("train") is None)

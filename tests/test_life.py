"""The whole life in one spec: pipelines/digits_life.yaml shrunk to seconds, run end to end through the real flow.

pretrain -> CMT -> MeanFlow -> RL of the 2-step student -> FK steering, an evaluation after each, and the
stage table (schemas/compare.py, flows/stage_table.py) read back from the store and checked against the
stages' own records.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tiny_specs import run_spec  # noqa: E402

from diffpipe.errors import SpecError  # noqa: E402
from diffpipe.flows.checks import check_spec  # noqa: E402
from diffpipe.flows.spec_loading import load_spec, validate_spec  # noqa: E402
from diffpipe.schemas import ArtifactRef  # noqa: E402
from diffpipe.storage import ArtifactStore  # noqa: E402
from diffpipe.storage.formats import read_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_TRAINING = {"batch_size": 16, "checkpoint_every": 4, "log_every": 4, "lr": 1e-3, "steps": 4}


def quick_life(root: Path) -> dict:
    """The shipped digits life with a tiny UNet, 4 steps per training stage, 20 samples per sample stage."""
    spec = yaml.safe_load((REPO / "pipelines" / "digits_life.yaml").read_text())
    spec["model"] = {"arch": "unet2d", "block_out_channels": [8, 16], "norm_num_groups": 8, "layers_per_block": 1}
    for stage in spec["stages"]:
        if stage["stage"] in ("pretrain", "midtrain", "distill"):
            stage.update(TINY_TRAINING)
        if stage["stage"] == "midtrain":
            stage["solver_steps"] = 4
        if stage["stage"] == "rl":
            stage.update(steps=2, group_size=4, groups_per_step=2, checkpoint_every=2, log_every=1)
        if stage["stage"] == "sample":
            stage["num_samples"] = 20
        if stage.get("search"):
            stage["search"]["particles"] = 2
        if stage["stage"] == "evaluate":
            stage["sw_projections"] = 16
    spec["storage"] = {"root": str(root)}
    spec["runtime"] = {"device": "cpu", "seed": 0}
    return spec


def test_the_shipped_life_specs_validate_with_every_library_check() -> None:
    for name in ("digits_life.yaml", "cei_life.yaml"):
        spec = load_spec(REPO / "pipelines" / name)
        check_spec(spec)
        kinds = [s.stage for s in spec.stages]
        assert {"pretrain", "midtrain", "distill", "rl", "sample", "evaluate"} <= set(kinds)
        assert any(getattr(s, "search", None) is not None for s in spec.stages)
        rl = next(s for s in spec.stages if s.stage == "rl")
        assert spec.stage(rl.init).stage == "distill" and rl.objective.kind == "flow_map"
        evaluated = {row.evaluate for row in spec.compare.rows}
        assert evaluated == {s.name for s in spec.stages if s.stage == "evaluate"}  # a row per evaluation


def test_compare_rows_must_name_an_evaluate_and_a_training_stage(tmp_path: Path) -> None:
    raw = quick_life(tmp_path)
    bad = copy.deepcopy(raw)
    bad["compare"]["rows"][0]["evaluate"] = "sample_pretrain"
    with pytest.raises(SpecError, match=r"compare.rows\[0\].evaluate"):
        validate_spec(bad)
    bad = copy.deepcopy(raw)
    bad["compare"]["rows"][1]["train"] = "evaluate_cmt"
    with pytest.raises(SpecError, match=r"compare.rows\[1\].train"):
        validate_spec(bad)
    bad = copy.deepcopy(raw)
    bad["stages"][9]["init"] = "evaluate_meanflow"
    with pytest.raises(SpecError, match=r"stages\[9\].init"):
        validate_spec(bad)


def test_the_digits_life_runs_end_to_end_and_its_table_lists_every_stage(tmp_path: Path, prefect_api) -> None:
    raw = quick_life(tmp_path)
    nodes = run_spec(raw)
    assert all(e["state"] == "executed" for e in nodes.values())
    store = ArtifactStore(str(tmp_path))
    rl = store.local_path(ArtifactRef.model_validate(nodes["rl"]["artifact"]))
    assert read_json(rl / "training.json")["objective"] == {"kind": "flow_map"}  # still a two-time student
    assert read_json(rl / "model" / "config.json")["_class_name"] == "FlowMapNet"
    log = read_json(rl / "reward_log.json")
    assert all(v is not None and torch.isfinite(torch.tensor(v)) for v in log["reward"])
    for name in ("sample_cmt", "sample_meanflow", "sample_rl"):
        assert nodes[name]["metrics"]["nfe_per_sample"] == 2  # NFE counted = the 2 flow-map steps
    search = nodes["sample_search"]["metrics"]
    assert search["search"] == "fk_steering" and search["nfe_per_sample"] == 2 * 2  # 2 particles x 2 steps
    assert nodes["sample_pretrain"]["metrics"]["nfe_per_sample"] == 8

    table = nodes["compare"]
    ref = ArtifactRef.model_validate(table["artifact"])
    written = json.loads((store.local_path(ref) / "stage_table.json").read_text())
    assert written["rows"] == table["metrics"]["rows"]
    rows = {r["row"]: r for r in written["rows"]}
    assert list(rows) == [r["label"] for r in raw["compare"]["rows"]]
    for spec_row in raw["compare"]["rows"]:
        row, evaluated = rows[spec_row["label"]], nodes[spec_row["evaluate"]]["metrics"]
        assert row["model.frechet_distance"] == evaluated["model"]["frechet_distance"]
        assert row["reward (model.classifier_logprob)"] == evaluated["model"]["classifier_logprob"] < 0
        sampled = nodes[spec_row["evaluate"].replace("evaluate", "sample")]["metrics"]
        assert row["nfe_per_sample"] == sampled["nfe_per_sample"]
        assert row["sampling_flops"] == sampled["sampling_flops"] > 0
        assert row["sampling_wall_s"] == sampled["stage_wall_s"] > 0
        if spec_row.get("train"):
            trained = nodes[spec_row["train"]]["metrics"]
            assert row["train_flops"] == trained["train_flops"] == trained["flops_per_step"] * trained["steps"] > 0
            assert row["train_wall_s"] == trained["train_wall_s"] > 0
        else:
            assert row["train_flops"] is None and row["search"] == "fk_steering"

    again = run_spec(raw)
    assert all(e["state"] == "cached" for n, e in again.items() if n != "compare")
    assert again["compare"]["metrics"]["rows"] == written["rows"]  # the cached run rebuilds the same table

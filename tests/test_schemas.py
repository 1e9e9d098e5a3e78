"""Spec validation: defaults, cross-references, overrides, readable errors, JSON Schema export."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from diffpipe.errors import SpecError
from diffpipe.flows.cli import main
from diffpipe.flows.spec_loading import apply_override, load_spec, validate_spec
from diffpipe.schemas import PipelineSpec, PretrainStage, SampleStage

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_specs_pass_the_full_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same path as `diffpipe validate`: schema, cross-references and the library checks (schedulers,
    rewards, solvers, the model against the data)."""
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert load_spec(path).stages


def test_defaults_and_default_references(tiny_spec: dict) -> None:
    raw = copy.deepcopy(tiny_spec)
    raw["stages"][1].pop("model")
    raw["stages"][2].pop("samples")
    spec = validate_spec(raw)
    assert isinstance(spec.stages[0], PretrainStage) and spec.stages[0].objective.kind == "flow_matching"
    assert isinstance(spec.stages[1], SampleStage) and spec.stages[1].model == "pretrain"
    assert spec.stages[2].samples == "sample"


def _error(raw: dict) -> SpecError:
    with pytest.raises(SpecError) as info:
        validate_spec(raw)
    return info.value


def test_reference_to_missing_later_and_wrong_kind(tiny_spec: dict) -> None:
    raw = copy.deepcopy(tiny_spec)
    raw["stages"][1]["model"] = "nope"
    assert _error(raw).where == "stages[1].model" and "missing" in _error(raw).problem
    raw["stages"][1]["model"] = "evaluate"
    err = _error(raw)
    assert err.where == "stages[1].model" and "later" in err.problem and "evaluate" in err.found
    raw["stages"][1]["model"] = "pretrain"
    raw["stages"][2]["samples"] = "pretrain"
    err = _error(raw)
    assert err.where == "stages[2].samples" and "wrong kind" in err.problem and "checkpoint" in err.found


def test_duplicate_names(tiny_spec: dict) -> None:
    raw = copy.deepcopy(tiny_spec)
    raw["stages"][2]["name"] = "sample"
    err = _error(raw)
    assert err.where == "stages[2].name" and "unique" in err.problem


def test_objective_scheduler_mismatch(tiny_spec: dict) -> None:
    raw = copy.deepcopy(tiny_spec)
    raw["stages"][1]["scheduler"]["name"] = "DDIMScheduler"
    err = _error(raw)
    assert err.where == "stages[1].scheduler.name" and "flow_matching" in err.problem
    raw["stages"][0]["objective"] = {"kind": "ddpm"}
    validate_spec(raw)  # DDIM fits DDPM


def test_unknown_field_wrong_type_and_unknown_kind_paths(tiny_spec: dict) -> None:
    raw = copy.deepcopy(tiny_spec)
    raw["stages"][0]["learning_rate"] = 1
    assert _error(raw).where == "stages[0].learning_rate"
    raw = copy.deepcopy(tiny_spec)
    raw["stages"][0]["steps"] = "many"
    err = _error(raw)
    assert err.where == "stages[0].steps" and err.found == "'many'"
    raw = copy.deepcopy(tiny_spec)
    raw["stages"][0]["objective"] = {"kind": "diffusion_magic"}
    err = _error(raw)
    assert err.where == "stages[0].objective.kind" and "flow_matching" in err.expected
    raw = copy.deepcopy(tiny_spec)
    del raw["data"]
    assert _error(raw).where == "data"


def test_overrides_by_name_and_index(tiny_spec: dict) -> None:
    raw = copy.deepcopy(tiny_spec)
    apply_override(raw, "stages.pretrain.steps=500")
    apply_override(raw, "stages[1].scheduler.steps=7")
    apply_override(raw, "runtime.seed=3")
    spec = validate_spec(raw)
    assert spec.stages[0].steps == 500 and spec.stages[1].scheduler.steps == 7 and spec.runtime.seed == 3
    with pytest.raises(SpecError) as info:
        apply_override(raw, "stages.nosuch.steps=1")
    assert "nosuch" in str(info.value)


def test_json_schema_export(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "diffpipe pipeline spec"
    text = json.dumps(schema)
    for kind in ("pretrain", "sample", "evaluate", "flow_matching", "edm", "ddpm", "unet2d", "dit"):
        assert f'"{kind}"' in text
    jsonschema = pytest.importorskip("jsonschema")
    for path in SPECS:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    assert PipelineSpec.model_json_schema()["additionalProperties"] is False


def test_a_stage_is_found_by_any_of_its_node_names() -> None:
    """`stage_index`, `stage` and `field_path` take a stage's name or one of its expanded nodes (self_train's
    generations), which is what a running node knows."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "pipelines" / "digits_self_train.yaml",
                     ["stages.self_train.generations=3"])
    assert spec.stage_index("self_train.gen2") == spec.stage_index("self_train") == 1
    assert spec.stage("self_train.gen2").generations == 2 and spec.stage("self_train").generations == 3
    assert spec.field_path("self_train.gen3", "selection") == "stages[1].selection"
    assert spec.stage("pretrain") is spec.stages[0] and spec.field_path("pretrain", "lr") == "stages[0].lr"
    for missing in ("self_train.gen4", "nosuch"):
        with pytest.raises(KeyError):
            spec.stage_index(missing)

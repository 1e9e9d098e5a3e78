"""midtrain / distill stages: spec checks, a tiny pipeline through the real flow, exact resume of distill."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tiny_specs import run_flow, run_spec

from diffpipe.errors import SpecError  # noqa: E402
from diffpipe.flows.checks import check_spec  # noqa: E402
from diffpipe.flows.spec_loading import load_spec, validate_spec  # noqa: E402
from diffpipe.schemas.distill import ConsistencyDistill, MeanFlowTraining, MidtrainStage  # noqa: E402
from diffpipe.storage import ArtifactStore  # noqa: E402
from diffpipe.storage.formats import load_tensors, read_json  # noqa: E402
from diffpipe.tasks.training import count_spikes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY_TRAINING = {"batch_size": 16, "checkpoint_every": 4, "log_every": 4, "lr": 1e-3}


def tiny_distill_spec(root: Path) -> dict:
    """The shipped digits_distill spec shrunk to seconds: tiny UNet, a few steps per stage, 40 samples."""
    spec = yaml.safe_load((REPO / "pipelines" / "digits_distill.yaml").read_text())
    spec["model"] = {"arch": "unet2d", "block_out_channels": [16, 32], "norm_num_groups": 8}
    for stage in spec["stages"]:
        if stage["stage"] in ("pretrain", "midtrain", "distill"):
            stage.update(TINY_TRAINING, steps=8, warmup_steps=0)
        if stage["stage"] == "sample":
            stage["num_samples"] = 40
        if stage["stage"] == "midtrain":
            stage["solver_steps"] = 4
    spec["storage"] = {"root": str(root)}
    spec["runtime"] = {"device": "cpu", "seed": 0}
    return spec


def _stages(spec: dict) -> dict[str, dict]:
    return {s["name"]: s for s in spec["stages"]}


def _error(raw: dict) -> SpecError:
    with pytest.raises(SpecError) as info:
        validate_spec(raw)
    return info.value


def test_shipped_spec_is_one_line_per_stage_with_defaults_and_teacher_references() -> None:
    spec = load_spec(REPO / "pipelines" / "digits_distill.yaml")
    by_name = {s.name: s for s in spec.stages}
    cmt, distill = by_name["cmt"], by_name["distill"]
    assert isinstance(cmt, MidtrainStage) and cmt.teacher == "pretrain" and cmt.solver_steps == 16
    assert isinstance(distill, MeanFlowTraining) and distill.init == "cmt"
    assert spec.upstream(distill) == {"init": "cmt"}  # MeanFlow on data reads no teacher
    samplers = [s for s in spec.stages if s.stage == "sample"]
    assert {s.scheduler.steps for s in samplers} >= {1, 2} and {s.model for s in samplers} == {"distill", "cmt"}


def test_teacher_defaults_to_the_latest_flow_matching_pretrain(tmp_path: Path) -> None:
    raw = tiny_distill_spec(tmp_path)
    raw["stages"].insert(2, {"name": "cd", "stage": "distill", "method": "consistency", "init": "random"})
    spec = validate_spec(raw)
    cd = next(s for s in spec.stages if s.name == "cd")
    assert isinstance(cd, ConsistencyDistill) and cd.teacher == "pretrain" and cd.init is None
    assert cd.objective.kind == "consistency"


def test_teacher_and_init_reference_errors_name_the_field(tmp_path: Path) -> None:
    raw = tiny_distill_spec(tmp_path)
    names = [s["name"] for s in raw["stages"]]
    cmt_at, distill_at = names.index("cmt"), names.index("distill")

    bad = copy.deepcopy(raw)  # a flow map is no velocity teacher
    bad["stages"][distill_at].update(method="meanflow_distill", teacher="cmt")
    err = _error(bad)
    assert err.where == f"stages[{distill_at}].teacher" and "EDM or DDPM pretrain" in err.problem
    assert "midtrain" in err.found

    bad = copy.deepcopy(raw)  # a regression checkpoint is no teacher, and no default one is left
    bad["stages"][0]["objective"] = {"kind": "regression"}
    err = _error(bad)
    assert err.where == f"stages[{cmt_at}].teacher" and "teacher must be" in err.problem and "pretrain" in err.found

    bad = copy.deepcopy(raw)  # init from a later stage
    bad["stages"][cmt_at]["teacher"] = "distill"
    err = _error(bad)
    assert err.where == f"stages[{cmt_at}].teacher" and "later" in err.problem

    bad = copy.deepcopy(raw)  # init from a stage that publishes samples
    bad["stages"][distill_at]["init"] = "pretrain"
    validate_spec(bad)  # the teacher's own weights are a valid start
    bad["stages"].insert(distill_at, {"name": "early_samples", "stage": "sample", "model": "pretrain"})
    bad["stages"][distill_at + 1]["init"] = "early_samples"
    err = _error(bad)
    assert err.where == f"stages[{distill_at + 1}].init" and "wrong kind" in err.problem

    bad = copy.deepcopy(raw)  # MeanFlow on data takes no teacher
    bad["stages"][distill_at]["teacher"] = "pretrain"
    assert _error(bad).where == f"stages[{distill_at}].teacher"

    bad = copy.deepcopy(raw)
    bad["stages"][distill_at]["method"] = "sid"
    err = _error(bad)
    assert err.where == f"stages[{distill_at}].method" and "meanflow" in err.expected


def test_flow_map_checkpoints_take_flow_map_schedulers_and_no_guidance(tmp_path: Path) -> None:
    raw = tiny_distill_spec(tmp_path)
    sample_at = next(i for i, s in enumerate(raw["stages"]) if s["stage"] == "sample")
    bad = copy.deepcopy(raw)
    bad["stages"][sample_at]["scheduler"]["name"] = "FlowMatchEulerDiscreteScheduler"
    err = _error(bad)
    assert err.where == f"stages[{sample_at}].scheduler.name" and "flow_map" in err.problem
    assert "FlowMapEulerDiscreteScheduler" in err.expected
    bad = copy.deepcopy(raw)
    bad["stages"][sample_at]["guidance_scale"] = 2.0
    assert _error(bad).where == f"stages[{sample_at}].guidance_scale"


def test_cmt_solvers_must_step_a_velocity_ode(tmp_path: Path) -> None:
    raw = tiny_distill_spec(tmp_path)
    cmt_at = next(i for i, s in enumerate(raw["stages"]) if s["stage"] == "midtrain")
    check_spec(validate_spec(copy.deepcopy(raw)))
    raw["stages"][cmt_at]["solver"] = "DDIMScheduler"
    with pytest.raises(SpecError) as info:
        check_spec(validate_spec(raw))
    assert info.value.where == f"stages[{cmt_at}].solver"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, prefect_api) -> tuple[dict, ArtifactStore, dict]:
    """The tiny distill pipeline run once through the real Prefect flow: spec, store, per-stage summary."""

    torch.set_num_threads(1)
    raw = tiny_distill_spec(tmp_path_factory.mktemp("distill") / "artifacts")
    summary = run_flow(raw)
    return raw, ArtifactStore(raw["storage"]["root"]), {s["name"]: s for s in summary}


@pytest.mark.slow
def test_tiny_pipeline_runs_and_samples_the_distilled_model_in_one_and_two_steps(tiny_run) -> None:
    from diffpipe.tasks.nets.flowmap import FlowMapNet

    raw, store, summary = tiny_run
    assert all(s["state"] == "executed" for s in summary.values())
    distilled = store.local_path(_ref(summary["distill"]))
    model = FlowMapNet.from_pretrained(distilled / "model")
    info = read_json(distilled / "training.json")
    assert info["objective"] == {"kind": "flow_map"} and info["method"] == "meanflow" and info["init"] == "cmt"
    assert (distilled / "scheduler" / "scheduler_config.json").exists() and model.config.base_class == "UNet2DModel"
    assert len(read_json(distilled / "losses.json")["losses"]) == summary["distill"]["metrics"]["steps"]
    nfe = {name: s["metrics"]["nfe_per_sample"] for name, s in summary.items() if s["stage"] == "sample"}
    assert nfe == {"sample_1step": 1, "sample_2step": 2, "sample_cmt_2step": 2}
    scores = [s["metrics"]["model"] for s in summary.values() if s["stage"] == "evaluate"]
    assert len(scores) == 3 and all(torch.isfinite(torch.tensor(m["frechet_distance"])) for m in scores)
    flops = {name: summary[name]["metrics"]["flops_per_step"] for name in ("pretrain", "cmt", "distill")}
    assert all(summary[n]["metrics"]["train_flops"] == f * summary[n]["metrics"]["steps"] for n, f in flops.items())
    assert 0 < flops["pretrain"] < flops["cmt"]  # a CMT step adds the teacher's trajectory solves
    assert flops["distill"] > flops["pretrain"]  # MeanFlow's JVP costs more than a plain forward


@pytest.mark.slow
def test_a_spike_is_a_step_above_three_times_the_median_of_the_window_before_it() -> None:
    calm = [1.0, 2.0] * 25  # median 1.5 over any 50 steps
    assert count_spikes(calm + [4.6, 4.4]) == 1  # 4.6 > 4.5; 4.4 is not (and the window moves on)
    assert count_spikes(calm[:49] + [100.0]) == 0  # no full window before the 50th step
    assert count_spikes(calm + [4.6], window=50, factor=4.0) == 0


def test_killed_consistency_distillation_resumes_to_identical_weights(tiny_run, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from diffpipe.tasks.context import StageContext
    from diffpipe.tasks.distill import run_distill
    from diffpipe.tasks.flowmap.consistency import ConsistencyDistillationLoss

    raw, store, summary = tiny_run
    raw = copy.deepcopy(raw)
    raw["stages"].append({"name": "cd", "stage": "distill", "method": "consistency", "init": "pretrain",
                          "target_ema": 0.9, "ema_decay": 0.9, **TINY_TRAINING, "steps": 8})
    spec = validate_spec(raw)
    inputs = {"data": _ref(summary["data"]), "teacher": _ref(summary["pretrain"]), "init": _ref(summary["pretrain"])}

    def run(key: str, workdir: Path) -> dict[str, torch.Tensor]:
        workdir.mkdir()
        ctx = StageContext(spec, "cd", key, inputs, store, workdir, progress=False)
        run_distill(ctx)
        return load_tensors(next((workdir / "model").glob("*.safetensors")))

    uninterrupted = run("uninterrupted", tmp_path / "a")
    original_call, calls = ConsistencyDistillationLoss.__call__, {"n": 0}

    def crash_at_step_seven(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(ConsistencyDistillationLoss, "__call__", crash_at_step_seven)
    with pytest.raises(KeyboardInterrupt):
        run("resumed", tmp_path / "b")
    assert store.run_dir("resumed").steps() == [4]
    monkeypatch.setattr(ConsistencyDistillationLoss, "__call__", original_call)
    resumed = run("resumed", tmp_path / "c")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def _ref(entry: dict):
    from diffpipe.schemas import ArtifactRef

    return ArtifactRef.model_validate(entry["artifact"])


def test_ddpm_and_edm_teachers_are_converted_but_their_weights_start_no_student(tmp_path: Path) -> None:
    raw = tiny_distill_spec(tmp_path)
    stages = _stages(raw)
    cmt_at = next(i for i, s in enumerate(raw["stages"]) if s["stage"] == "midtrain")
    for kind in ("ddpm", "edm"):
        stages["pretrain"]["objective"] = {"kind": kind}
        err = _error(copy.deepcopy(raw))  # cmt starts from the teacher's weights by default
        assert err.where == f"stages[{cmt_at}].teacher" and "init random" in err.problem
        bad = copy.deepcopy(raw)
        _stages(bad)["cmt"]["init"] = "random"
        _stages(bad)["distill"]["init"] = "pretrain"
        assert "init" in _error(bad).where
        _stages(bad)["distill"]["init"] = "cmt"
        validate_spec(bad)


@pytest.mark.slow
def test_cmt_from_a_ddpm_teacher_runs_and_samples(tmp_path: Path, prefect_api) -> None:

    raw = tiny_distill_spec(tmp_path / "artifacts")
    stages = _stages(raw)
    stages["pretrain"]["objective"] = {"kind": "ddpm", "prediction": "v_prediction"}
    stages["cmt"]["init"] = "random"
    raw["stages"] = [s for s in raw["stages"] if s["name"] in ("pretrain", "cmt", "sample_cmt_2step",
                                                                "evaluate_cmt_2step")]
    summary = run_spec(raw)
    assert all(s["state"] == "executed" for s in summary.values())
    assert summary["sample_cmt_2step"]["metrics"]["nfe_per_sample"] == 2
    assert torch.isfinite(torch.tensor(summary["evaluate_cmt_2step"]["metrics"]["model"]["frechet_distance"]))

"""Countdown through the real flow (data -> pretrain -> sample -> evaluate -> rl -> sample -> evaluate),
and schema validation of every discrete RL algorithm's options."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from pydantic import TypeAdapter, ValidationError  # noqa: E402
from tiny_specs import run_spec as run  # noqa: E402

from diffpipe.flows.plan import status  # noqa: E402
from diffpipe.flows.spec_loading import validate_spec  # noqa: E402
from diffpipe.schemas import PipelineSpec  # noqa: E402
from diffpipe.schemas.rl_discrete import DiscreteAlgorithmSpec  # noqa: E402
from diffpipe.storage import ArtifactStore  # noqa: E402
from diffpipe.storage.formats import read_json  # noqa: E402
from diffpipe.tasks.nets.mdlm import MaskedDiffusionTransformer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY_STAGES = {
    "pretrain": {"steps": 12, "batch_size": 32, "checkpoint_every": 6, "log_every": 6, "warmup_steps": 2},
    "sample_pretrained": {"num_samples": 16},
    "rl": {"steps": 8, "groups_per_step": 2, "group_size": 4, "checkpoint_every": 4, "log_every": 4},
    "sample": {"num_samples": 16},
}


def tiny_countdown_spec(root: Path, algorithm: str = "espo") -> dict:
    """The shipped Countdown pipeline shrunk to seconds: a 16-wide 1-layer model, tens of steps."""
    spec = yaml.safe_load((REPO / "pipelines" / "countdown.yaml").read_text())
    spec["data"].update(num_train=64, num_test=16)
    spec["model"] = {"arch": "mdlm", "d_model": 16, "num_layers": 1, "num_heads": 2}
    for stage in spec["stages"]:
        stage.update(copy.deepcopy(TINY_STAGES.get(stage["name"], {})))
    rl = next(s for s in spec["stages"] if s["name"] == "rl")
    rl["algorithm"]["algorithm"] = algorithm
    spec["storage"] = {"root": str(root)}
    spec["runtime"] = {"device": "cpu", "seed": 0}
    return spec




@pytest.mark.slow
def test_countdown_pipeline_end_to_end(tmp_path: Path, prefect_api) -> None:
    raw = tiny_countdown_spec(tmp_path / "artifacts")
    states = run(raw)
    assert {n: s["state"] for n, s in states.items()} == dict.fromkeys(
        ["data", "pretrain", "sample_pretrained", "evaluate_pretrained", "rl", "sample", "evaluate"], "executed")
    spec = validate_spec(copy.deepcopy(raw))
    store = ArtifactStore(spec.storage.root)
    refs = {r.name: r.ref for r in status(spec, store)}

    rl_dir = store.local_path(refs["rl"])
    model = MaskedDiffusionTransformer.from_pretrained(rl_dir / "model")
    assert read_json(rl_dir / "training.json")["objective"]["kind"] == "masked_diffusion"
    metrics = read_json(rl_dir / "metrics.json")
    # countdown.yaml pins num_iterations (mu) to 2: 8 steps = 4 rollout batches of 2 prompts x 4 completions
    assert metrics["algorithm"] == "espo" and metrics["rollout_batches"] == 4 and metrics["samples_generated"] == 32
    # per rollout: 8 decoding steps; ESPO's ELBO = num_mc 2 pairs = 4 passes, old + ref for each of mu = 2
    # iterations at rollout time (16), 4 with gradient per iteration (8)
    assert metrics["forwards_per_rollout"] == {"sampling": 8.0, "scoring": 16.0, "grad": 8.0}
    timings = store.manifest(refs["rl"].sha256)["lineage"]["timings"]["metrics.json"]  # run facts: not hashed
    assert {"train_wall_s", "steps_per_s", "resumed_from_step"} <= set(timings) and "train_flops" not in metrics
    log = read_json(rl_dir / "reward_log.json")
    assert [r is not None for r in log["reward"]] == [True, False] * 4
    # exact_verifier (at most 1) plus countdown_closeness (at most 1) at countdown.yaml's weight 0.4
    assert all(0.0 <= r <= 1.4 for r in log["reward"] if r is not None)

    before = read_json(store.local_path(refs["evaluate_pretrained"]) / "metrics.json")
    after = read_json(store.local_path(refs["evaluate"]) / "metrics.json")
    for scores in (before, after):
        assert scores["num_samples"] == 16 and scores["data_floor"] == {"accuracy": 1.0, "reward": 1.0}
        assert 0.0 <= scores["model"]["accuracy"] <= scores["model"]["reward"] <= 1.0
    assert model.config.max_length == 8 + 8  # prompt 'a,b,c=tt' and completion of the data

    # changing only the algorithm reruns RL and what follows it; pretraining and its scores stay cached
    other = tiny_countdown_spec(tmp_path / "artifacts", algorithm="wd1")
    rerun = run(other)
    executed = {n for n, s in rerun.items() if s["state"] == "executed"}
    # artifacts are content-addressed: evaluate reruns only when the new samples differ from the old ones
    resampled = rerun["sample"]["artifact"]["sha256"] != states["sample"]["artifact"]["sha256"]
    assert executed == {"rl", "sample"} | ({"evaluate"} if resampled else set())


@pytest.mark.parametrize("bad", [
    {"algorithm": "espo", "num_mc": 0},
    {"algorithm": "dmpo", "num_replicates": 3},
    {"algorithm": "coupled_grpo", "t_min": 0.9, "t_max": 0.5},
    {"algorithm": "gdpo", "quadrature": "trapezoid"},
    {"algorithm": "diffu_grpo", "p_mask_prompt": 1.0},
    {"algorithm": "wd1", "epsilon": 0.2},
    {"algorithm": "grpo"},
])
def test_bad_algorithm_options_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(DiscreteAlgorithmSpec).validate_python(bad)


def test_rl_stage_checks_discrete_fields(tmp_path: Path) -> None:
    raw = tiny_countdown_spec(tmp_path / "artifacts")
    rl = next(s for s in raw["stages"] if s["name"] == "rl")
    rl["combine"] = "marble"
    rl["rewards"] = [{"name": "exact_verifier"}, {"name": "ink"}]
    with pytest.raises(ValidationError, match="combine"):
        PipelineSpec.model_validate(raw)
    raw = tiny_countdown_spec(tmp_path / "artifacts")
    sample = next(s for s in raw["stages"] if s["name"] == "sample")
    sample["scheduler"]["name"] = "FlowMatchEulerDiscreteScheduler"
    with pytest.raises(ValidationError, match="BlockRefinementScheduler"):
        PipelineSpec.model_validate(raw)

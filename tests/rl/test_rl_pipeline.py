"""A tiny pretrain -> rl -> sample -> evaluate pipeline through the real Prefect flow, and exact resume."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402
from tiny_specs import run_flow

from diffpipe.flows.plan import node_key, nodes, status  # noqa: E402
from diffpipe.flows.spec_loading import validate_spec  # noqa: E402
from diffpipe.storage import ArtifactStore  # noqa: E402
from diffpipe.storage.formats import read_json  # noqa: E402
from diffpipe.tasks.context import StageContext  # noqa: E402
from diffpipe.tasks.registry import get_domain, get_stage  # noqa: E402
from diffpipe.tasks.rl.stage import fine_tune  # noqa: E402

pytestmark = pytest.mark.slow
torch.set_num_threads(1)  # two shared cores: a second thread only spins

RL = {"name": "rl", "stage": "rl", "init": "pretrain", "group_size": 4, "groups_per_step": 2, "steps": 6,
      "checkpoint_every": 2, "log_every": 2, "lr": 1e-4}


def rl_spec(tiny_spec: dict, **rl) -> dict:
    """The tiny digits pipeline with an rl stage between pretrain and sample."""
    raw = copy.deepcopy(tiny_spec)
    raw["name"] = "digits_rl_test"
    raw["stages"].insert(1, {**RL, **rl})
    raw["stages"][2]["model"] = "rl"
    return raw


def test_rl_pipeline_publishes_a_sampleable_flow_matching_checkpoint(tiny_spec: dict, prefect_api) -> None:

    raw = rl_spec(tiny_spec, algorithm={"algorithm": "flow_grpo", "sampler_steps": 4},
                  rewards=[{"name": "classifier_logprob"}, {"name": "ink", "weight": 0.5}])
    summary = run_flow(raw)
    assert [s["state"] for s in summary] == ["executed"] * 5
    spec = validate_spec(copy.deepcopy(raw))
    store = ArtifactStore(spec.storage.root)
    rows = {r.name: r for r in status(spec, store)}
    folder = store.local_path(rows["rl"].ref)
    info = read_json(folder / "training.json")
    assert info["objective"]["kind"] == "flow_matching" and info["rl"]["algorithm"]["algorithm"] == "flow_grpo"
    model = UNet2DModel.from_pretrained(folder / "model")
    assert model.config.num_class_embeds == 11
    metrics = read_json(folder / "metrics.json")
    assert metrics["samples_generated"] == 3 * 8 and metrics["rollout_batches"] == 3  # 2 updates per rollout
    assert set(metrics) >= {"reward", "reward/classifier_logprob", "reward/ink"}
    assert "train_wall_s" in store.manifest(rows["rl"].ref.sha256)["lineage"]["timings"]["metrics.json"]
    assert "flops_per_step" not in metrics  # a rollout step and an update step differ: no per-step FLOPs
    log = read_json(folder / "reward_log.json")
    assert len(log["reward"]) == 6 and log["reward"][1] is None and log["kl"][0] is not None
    assert (folder / "reward_curve.png").stat().st_size > 1000 and (folder / "scheduler").is_dir()
    evaluate = read_json(store.local_path(rows["evaluate"].ref) / "metrics.json")
    assert "frechet_distance" in evaluate["model"]
    again = run_flow(raw)
    assert [s["state"] for s in again] == ["cached"] * 5


class Crash(RuntimeError):
    """Raised by the hook to kill a run mid-training."""


def upstream_in_process(spec) -> tuple[ArtifactStore, dict]:
    """Data and pretrain artifacts built by their stage functions, without Prefect."""
    store, refs = ArtifactStore(spec.storage.root), {}
    for node in nodes(spec)[:2]:
        key, _ = node_key(spec, node, refs)
        with tempfile.TemporaryDirectory() as tmp:
            ctx = StageContext(spec, node.name, key, {n: refs[s] for n, s in node.upstream.items()}, store, Path(tmp),
                               progress=False)
            out = get_domain(node.kind).build(ctx) if node.name == "data" else get_stage(node.kind)(ctx)
            refs[node.name] = store.publish(Path(tmp), out.kind, {"node": node.name})
    return store, refs


def test_rl_resume_reaches_the_same_weights(tiny_spec: dict) -> None:
    """NFT (old-policy copy) with MARBLE (alpha state): a run killed at step 3 resumes to identical weights."""
    raw = rl_spec(tiny_spec, algorithm={"algorithm": "diffusion_nft", "sampler_steps": 3, "train_timesteps": 2},
                  rewards=[{"name": "classifier_logprob"}, {"name": "ink"}], combine="marble")
    spec = validate_spec(copy.deepcopy(raw))
    store, refs = upstream_in_process(spec)
    inputs = {"data": refs["data"], "init": refs["pretrain"]}

    def run(key: str, hook=None):
        with tempfile.TemporaryDirectory() as tmp:
            ctx = StageContext(spec, "rl", key, inputs, store, Path(tmp), progress=False)
            return fine_tune(ctx, spec.stage("rl"), hook)

    straight = run("straight")

    def crash_at_3(step, _run) -> None:
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        run("crashed", crash_at_3)
    resumed = run("crashed")
    assert resumed.result.resumed_from == 2
    for a, b in zip(straight.policy.state_dict().values(), resumed.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(straight.state.alpha, resumed.state.alpha, rtol=0, atol=0)
    torch.testing.assert_close(straight.state.anchors["old"].state_dict()["conv_in.weight"],
                               resumed.state.anchors["old"].state_dict()["conv_in.weight"], rtol=0, atol=0)
    assert not torch.isnan(resumed.state.alpha).any() and resumed.state.alpha.sum().item() == pytest.approx(1.0)

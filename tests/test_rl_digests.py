"""An rl stage republishes the same digest when run twice: its artifact holds content only, no run facts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from tiny_specs import run_spec, tiny_digits_spec  # noqa: E402

from diffpipe.storage import ArtifactStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "mdlm"))
from test_mdlm_pipeline import tiny_countdown_spec  # noqa: E402

pytestmark = pytest.mark.slow


def digits_rl(root: Path) -> dict:
    """Tiny digits: data -> pretrain -> rl (Flow-GRPO, two updates per rollout batch)."""
    raw = tiny_digits_spec(root)
    raw["name"] = "digits_rl_digests"
    raw["stages"] = [raw["stages"][0], {
        "name": "rl", "stage": "rl", "init": "pretrain", "algorithm": {"algorithm": "flow_grpo", "sampler_steps": 3},
        "rewards": [{"name": "classifier_logprob"}], "group_size": 4, "groups_per_step": 2, "steps": 4,
        "checkpoint_every": 2, "log_every": 2}]
    return raw


def countdown_rl(root: Path) -> dict:
    """Tiny Countdown: data -> pretrain -> rl (masked-diffusion RL)."""
    raw = tiny_countdown_spec(root)
    raw["name"] = "countdown_rl_digests"
    raw["stages"] = [s for s in raw["stages"] if s["name"] in ("pretrain", "rl")]
    return raw


@pytest.mark.parametrize("make", [digits_rl, countdown_rl], ids=["flow_matching", "masked_diffusion"])
def test_identical_rl_runs_publish_identical_digests(make, tmp_path: Path, prefect_api) -> None:
    first = run_spec(make(tmp_path / "a"))
    second = run_spec(make(tmp_path / "b"))
    assert [s["state"] for s in second.values()] == ["executed"] * 3  # another root: computed again
    digests = [{n: s["artifact"]["sha256"] for n, s in run.items()} for run in (first, second)]
    assert digests[0] == digests[1]
    lineage = ArtifactStore(str(tmp_path / "b")).manifest(digests[1]["rl"])["lineage"]
    assert "wall_s" in lineage["timings"]["reward_log.json"]  # the wall-time column is kept as a run fact
    assert "train_wall_s" in second["rl"]["metrics"]  # and the index record keeps the stage's timings

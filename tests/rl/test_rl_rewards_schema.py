"""Reward plugins on real digits, reward lookup errors, and the rl stage schema's checks."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from diffpipe.errors import SpecError  # noqa: E402
from diffpipe.schemas import PipelineSpec  # noqa: E402
from diffpipe.schemas.rl import RLStage  # noqa: E402
from diffpipe.storage.formats import save_tensors  # noqa: E402
from diffpipe.tasks.data.cei.rewards import physics_round_trip  # noqa: E402
from diffpipe.tasks.data.digits import CLASSIFIER_FILE, train_classifier  # noqa: E402
from diffpipe.tasks.data.digits_rewards import classifier_logprob, ink  # noqa: E402
from diffpipe.tasks.rl.rewards import resolve_reward  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits_artifact(tmp_path_factory: pytest.TempPathFactory):
    """A data folder holding a classifier trained on half the digits; the other half for scoring."""
    raw = load_digits()
    x = torch.from_numpy((raw.images / 8.0 - 1.0).astype(np.float32))[:, None]
    y = torch.from_numpy(raw.target)
    path = tmp_path_factory.mktemp("digits")
    save_tensors(train_classifier(x[::2], y[::2], seed=0, epochs=150).state_dict(), path / CLASSIFIER_FILE)
    return path, x[1::2][:200], y[1::2][:200]


def test_classifier_reward_prefers_the_requested_class(digits_artifact) -> None:
    path, x, y = digits_artifact
    fn = classifier_logprob
    right, wrong = fn(x, y, path), fn(x, (y + 1) % 10, path)
    assert right.shape == (len(x),) and (right <= 0).all()
    assert right.mean() > -0.5 > wrong.mean()
    assert fn(x, None, path).mean() >= right.mean()  # unconditional: log-prob of the top class


def test_ink_rewards_more_ink_without_bound(digits_artifact) -> None:
    path, x, y = digits_artifact
    assert (ink(x + 0.5, y, path) > ink(x, y, path)).all()
    assert ink(torch.full((1, 1, 8, 8), 3.0), None, path).item() == pytest.approx(2.0)


def test_unknown_or_misplaced_reward_names_the_field() -> None:
    with pytest.raises(SpecError, match=r"stages\[1\].rewards\[0\].name.*unknown reward"):
        resolve_reward("nosuch", "digits", "stages[1].rewards[0].name")
    with pytest.raises(SpecError, match="does not apply to climate"):
        resolve_reward("ink", "climate", "stages[1].rewards[0].name")


def _spec(tiny_spec: dict, **rl) -> dict:
    raw = copy.deepcopy(tiny_spec)
    raw["stages"].insert(1, {"name": "rl", "stage": "rl", "init": "pretrain",
                             "rewards": [{"name": "classifier_logprob"}], **rl})
    raw["stages"][2]["model"] = "rl"
    return raw


def test_rl_stage_schema_defaults_and_checks(tiny_spec: dict) -> None:
    spec = PipelineSpec.model_validate(_spec(tiny_spec))
    rl = spec.stage("rl")
    assert isinstance(rl, RLStage) and rl.algorithm.algorithm == "flow_grpo" and rl.algorithm.clip_range == 1e-4
    assert spec.stage("sample").model == "rl"
    awm = PipelineSpec.model_validate(_spec(tiny_spec, algorithm={"algorithm": "awm"})).stage("rl").algorithm
    assert (awm.noise_level, awm.timesteps_per_sample, awm.kl_beta) == (0.4, 6, 1e-3)
    bad = [
        ({"algorithm": {"algorithm": "ppo"}}, "algorithm"),
        ({"combine": "marble"}, "marble"),
        ({"checkpoint_every": 3}, "checkpoint_every"),
        ({"rewards": [{"name": "ink"}, {"name": "ink"}]}, "each reward once"),
        ({"rewards": [{"name": "ink", "weight": 2.0}, {"name": "classifier_logprob"}], "combine": "marble"}, "weight"),
        ({"algorithm": {"algorithm": "diffusion_nft", "clip_range": 0.1}}, "clip_range"),
    ]
    for fields, message in bad:
        with pytest.raises(ValidationError, match=message):
            PipelineSpec.model_validate(_spec(tiny_spec, **fields))
    later = _spec(tiny_spec)
    later["stages"][1]["init"] = "evaluate"
    with pytest.raises(ValueError, match="later stage"):
        PipelineSpec.model_validate(later)


def test_sample_stage_checks_its_scheduler_against_the_rl_checkpoint(tiny_spec: dict) -> None:
    raw = _spec(tiny_spec)
    raw["stages"][2]["scheduler"] = {"name": "DDIMScheduler", "steps": 4}
    with pytest.raises(ValueError, match="does not fit the flow_matching objective"):
        PipelineSpec.model_validate(raw)


def test_physics_round_trip_reward_is_zero_for_the_true_geometry(tmp_path) -> None:
    from diffpipe.storage.formats import write_json
    from diffpipe.tasks.data.cei.charges import masses_from_atomic_numbers
    from diffpipe.tasks.data.cei.domain import SETTINGS_FILE
    from diffpipe.tasks.data.cei.forward import simulate_explosion

    write_json(tmp_path / SETTINGS_FILE, {"position_scale_bohr": 2.0})
    # water-like O, H, H (Bohr) and a padded slot; charges +2, +1, +1
    positions = torch.tensor([[[0.0, 0.0, 0.0], [1.43, 1.11, 0.0], [-1.43, 1.11, 0.0], [0.0, 0.0, 0.0]]],
                             dtype=torch.float64)
    elements = torch.tensor([[8, 1, 1, 0]])
    charges, mask = torch.tensor([[2.0, 1.0, 1.0, 0.0]]), elements > 0
    masses = torch.from_numpy(masses_from_atomic_numbers(elements.numpy()))
    momenta = simulate_explosion(positions, charges, masses, mask).momenta
    cond = {"elements": elements, "charges": charges, "momenta": momenta.float(), "mask": mask}
    fn = physics_round_trip
    true = fn((positions / 2.0).float(), cond, tmp_path)
    stretched = fn((positions * 1.3 / 2.0).float(), cond, tmp_path)
    assert true.item() == pytest.approx(0.0, abs=1e-3) and stretched.item() < -0.05
    collided = fn(torch.zeros(1, 4, 3), cond, tmp_path)  # all atoms on one point: capped, finite
    assert torch.isfinite(collided).all() and collided.item() <= stretched.item()

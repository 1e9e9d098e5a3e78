"""Shared fixtures: offline hub, a tiny digits spec, one temporary Prefect API for the session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = {
    "pretrain": {"steps": 24, "batch_size": 32, "checkpoint_every": 8, "log_every": 8, "warmup_steps": 4},
    "sample": {"num_samples": 40, "scheduler": {"name": "FlowMatchEulerDiscreteScheduler", "steps": 4}},
}


def tiny_digits_spec(root: Path) -> dict:
    """The shipped digits spec shrunk to seconds of work, storing under `root`."""
    spec = yaml.safe_load((REPO / "pipelines" / "digits.yaml").read_text())
    spec = copy.deepcopy(spec)
    spec["model"] = {"arch": "unet2d", "block_out_channels": [16, 32], "norm_num_groups": 8}
    for stage in spec["stages"]:
        stage.update(copy.deepcopy(TINY_OVERRIDES.get(stage["name"], {})))
    spec["storage"] = {"root": str(root)}
    spec["runtime"] = {"device": "cpu", "seed": 0}
    return spec


@pytest.fixture
def tiny_spec(tmp_path: Path) -> dict:
    """A tiny digits pipeline dict with its artifact root in a temporary folder."""
    return tiny_digits_spec(tmp_path / "artifacts")


@pytest.fixture
def tiny_spec_file(tmp_path: Path, tiny_spec: dict) -> Path:
    """The tiny digits pipeline written as YAML."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_spec))
    return path


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API (SQLite in a temp dir) for in-process flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield

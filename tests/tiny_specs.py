"""Tiny versions of the shipped specs, shared by tests that run real pipelines."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

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

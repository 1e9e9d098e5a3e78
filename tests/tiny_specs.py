"""Tiny versions of the shipped specs, shared by tests that run real pipelines."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

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


def run_flow(raw: dict | Any) -> list[dict]:
    """Run a spec (a dict, validated here, or a validated PipelineSpec) through the real Prefect flow; the
    summary entry of each stage, in the spec's order."""
    from prefect import flow

    from diffpipe.flows.pipeline import execute
    from diffpipe.flows.spec_loading import validate_spec

    spec = validate_spec(copy.deepcopy(raw)) if isinstance(raw, dict) else raw
    return flow(name="diffpipe-test")(execute)(spec)


def run_spec(raw: dict | Any) -> dict[str, dict]:
    """`run_flow` keyed by stage name."""
    return {s["name"]: s for s in run_flow(raw)}


def rl_log_first(store_root: str, entry: dict, column: str) -> float:
    """The mean of the first tenth of rollout batches of `column` in an rl stage's reward_log.json."""
    from diffpipe.schemas import ArtifactRef
    from diffpipe.storage import ArtifactStore
    from diffpipe.storage.formats import read_json

    path = ArtifactStore(store_root).local_path(ArtifactRef.model_validate(entry["artifact"]))
    values = [v for v in read_json(path / "reward_log.json")[column] if v is not None]
    k = max(1, len(values) // 10)
    return sum(values[:k]) / k

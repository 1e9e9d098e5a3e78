"""CEI: FK steering on the physics round-trip reward through the real flow (slow: data build and training)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from dask.distributed import LocalCluster
from tiny_specs import run_flow

from diffpipe.flows.plan import status
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import read_json

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def cei_spec(root: Path, dask_address: str) -> dict:
    """The CEI quick profile shrunk to seconds, its diffusion model sampled plainly and with FK steering."""
    raw = yaml.safe_load((REPO / "pipelines" / "cei.yaml").read_text())
    raw["data"].update(max_atoms=3, elements=["H", "C", "N", "O"], geometries_per_molecule=4, events_per_chunk=16,
                       test_fraction=0.3, distortion_probability=0.0)
    raw["model"] = {"arch": "atom_transformer", "width": 16, "depth": 1, "heads": 2}
    diffusion = next(s for s in raw["stages"] if s["name"] == "diffusion")
    diffusion.update(steps=16, batch_size=16, checkpoint_every=8, log_every=8, warmup_steps=2)
    sample = {"stage": "sample", "model": "diffusion", "num_samples": 6, "samples_per_condition": 2,
              "batch_size": 12, "scheduler": {"name": "FlowMatchEulerDiscreteScheduler", "steps": 4}}
    raw["stages"] = [diffusion, {**sample, "name": "plain"},
                     {**sample, "name": "fk", "search": {"method": "fk_steering", "reward": "physics_round_trip",
                                                         "particles": 3, "resample_every": 1}},
                     {"name": "evaluate_fk", "stage": "evaluate", "samples": "fk"}]
    raw["storage"] = {"root": str(root)}
    raw["runtime"] = {"device": "cpu", "seed": 0, "dask_address": dask_address}
    return raw


def test_fk_steering_samples_cei_geometries_with_the_round_trip_reward(tmp_path: Path, prefect_api) -> None:

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        raw = cei_spec(tmp_path / "artifacts", cluster.scheduler_address)
        summary = run_flow(raw)
    assert {s["state"] for s in summary} == {"executed"}
    spec = validate_spec(copy.deepcopy(raw))
    store = ArtifactStore(spec.storage.root)
    rows = {r.name: r for r in status(spec, store)}
    plain, fk = (read_json(store.local_path(rows[n].ref) / "metrics.json") for n in ("plain", "fk"))
    assert plain["nfe_per_sample"] == 4 and fk["nfe_per_sample"] == 3 * 4 and fk["search"] == "fk_steering"
    assert fk["search_reward_mean"] <= 0.0 and fk["flops_per_evaluation"] > 0
    scored = read_json(store.local_path(rows["evaluate_fk"].ref) / "metrics.json")
    assert scored["sampling_costs"]["search"] == "fk_steering" and scored["draws_per_event"] == 2

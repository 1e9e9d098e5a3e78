"""Climate: best-of-N, FK steering and DTS* on the global-mean response reward through the real Prefect flow."""

from __future__ import annotations

import copy
from pathlib import Path

from tiny_specs import run_flow

from diffpipe.flows.plan import status
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import open_dataset

REWARD = "global_mean_response"
SEARCHES = {
    "bon": {"method": "best_of_n", "reward": REWARD, "particles": 2},
    "fk": {"method": "fk_steering", "reward": REWARD, "particles": 2, "resample_every": 1, "ess_threshold": None},
    "dts": {"method": "tree_search", "reward": REWARD, "rollouts": 2, "variant": "dts_star"},
}
STEPS, MEMBERS = 2, 2


def climate_search_spec(root: Path) -> dict:
    """A builder store on an 8 x 12 grid, a flow-matching emulator trained for 4 steps, searched three ways."""
    sample = {"stage": "sample", "model": "emulator", "num_samples": MEMBERS,
              "scheduler": {"name": "FlowMatchEulerDiscreteScheduler", "steps": STEPS}}
    return {
        "name": "climate-search-test",
        "data": {"kind": "climate", "source": {"kind": "builder", "nlat": 8, "nlon": 12, "members": 3,
                                               "scenarios": ["historical", "ssp126", "ssp245"]},
                 "train_scenarios": ["historical", "ssp126"]},
        "model": {"arch": "unet2d", "block_out_channels": [8, 16, 16], "norm_num_groups": 4, "attention": False},
        "stages": [{"name": "emulator", "stage": "pretrain", "objective": {"kind": "flow_matching"}, "steps": 4,
                    "batch_size": 8, "checkpoint_every": 4, "log_every": 4, "warmup_steps": 1, "cond_dropout": 0.0},
                   *({**sample, "name": name, "search": block} for name, block in SEARCHES.items()),
                   {"name": "evaluate_fk", "stage": "evaluate", "samples": "fk", "metrics": ["domain"]}],
        "runtime": {"device": "cpu", "seed": 0, "dask_workers": 1},
        "storage": {"root": str(root)},
    }


def test_continuous_searches_sample_the_climate_emulator_with_its_reward(tmp_path: Path, prefect_api) -> None:

    raw = climate_search_spec(tmp_path / "artifacts")
    summary = run_flow(raw)
    assert {s["state"] for s in summary} == {"executed"}
    spec = validate_spec(copy.deepcopy(raw))
    store = ArtifactStore(spec.storage.root)
    rows = {r.name: r for r in status(spec, store)}
    metrics = {name: rows[name].metrics for name in SEARCHES}
    assert metrics["bon"]["nfe_per_sample"] == 2 * STEPS and metrics["fk"]["nfe_per_sample"] == 2 * STEPS
    assert STEPS < metrics["dts"]["nfe_per_sample"] <= 2 * STEPS
    assert metrics["fk"]["search_resampling_events_per_condition"] > 0  # ESS threshold off: always resample
    for name, m in metrics.items():
        assert m["search"] == SEARCHES[name]["method"] and m["search_reward_mean"] <= 0.0, name
        assert m["flops_per_evaluation"] > 0
        if name != "dts":  # the best of each condition's particles
            assert m["search_reward_mean"] >= m["search_reward_of_all_particles"], name
        tas = open_dataset(store.local_path(rows[name].ref) / "samples.zarr")
        assert tas.sizes["member"] == MEMBERS and bool(tas.notnull().all().to_array().all()), name
    scored = rows["evaluate_fk"].metrics
    assert scored["sampling_costs"]["search"] == "fk_steering"

"""A tiny digits pipeline with every continuous search through the real Prefect flow: costs recorded, cached rerun."""

from __future__ import annotations

import copy

from tiny_specs import run_flow

from diffpipe.flows.plan import status
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import open_dataset

SEARCHES = {
    "bon": {"method": "best_of_n", "reward": "classifier_logprob", "particles": 4},
    "fk": {"method": "fk_steering", "reward": "classifier_logprob", "particles": 4, "potential": "difference",
           "resample_every": 1},
    "dts": {"method": "tree_search", "reward": "classifier_logprob", "rollouts": 4},
    "chords": {"method": "chords", "cores": 2, "init_steps": [0, 2]},
}


def test_search_stages_sample_score_and_report_their_compute(tiny_spec: dict, prefect_api) -> None:

    raw = copy.deepcopy(tiny_spec)
    raw["name"] = "digits_search_test"
    plain, evaluate = raw["stages"][1], raw["stages"][2]
    plain["num_samples"] = 20
    searched = [{**copy.deepcopy(plain), "name": name, "search": s} for name, s in SEARCHES.items()]
    raw["stages"] = [raw["stages"][0], plain, *searched, {**evaluate, "name": "evaluate_fk", "samples": "fk"}]
    summary = run_flow(raw)
    assert [s["state"] for s in summary] == ["executed"] * 8
    spec = validate_spec(copy.deepcopy(raw))
    store = ArtifactStore(spec.storage.root)
    rows = {r.name: r for r in status(spec, store)}
    # the index record keeps the run facts (wall time, energy) that the hashed metrics.json leaves out
    metrics = {name: rows[name].metrics for name in rows if name != "data"}
    steps = plain["scheduler"]["steps"]
    assert metrics["sample"]["nfe_per_sample"] == steps and "search" not in metrics["sample"]
    assert metrics["bon"]["nfe_per_sample"] == 4 * steps and metrics["fk"]["nfe_per_sample"] == 4 * steps
    assert steps < metrics["dts"]["nfe_per_sample"] <= 4 * steps
    assert metrics["chords"]["search_rounds"] == 1 + steps - 2  # the worker processes ran in the Prefect task
    assert metrics["chords"]["nfe_per_sample"] == 1 + 2 * (steps - 2)
    for name in ("sample", "bon", "fk", "dts", "chords"):
        m = metrics[name]
        assert m["flops_per_evaluation"] > 0 and m["stage_wall_s"] > 0
        assert m["sampling_flops"] == m["flops_per_evaluation"] * m["network_evaluations_per_sample"] * 20
        assert isinstance(m["cpu_energy_j"], float) or m["cpu_energy_j"].startswith("not available")
    assert metrics["bon"]["search_reward_mean"] >= metrics["bon"]["search_reward_of_all_particles"]
    labels = open_dataset(store.local_path(rows["dts"].ref) / "samples.zarr")["label"].values
    assert len(labels) == 20
    scored = metrics["evaluate_fk"]
    assert "frechet_distance" in scored["model"] and scored["sampling_costs"]["search"] == "fk_steering"
    assert scored["evaluation_flops"] > 0
    again = run_flow(raw)
    assert [s["state"] for s in again] == ["cached"] * 8

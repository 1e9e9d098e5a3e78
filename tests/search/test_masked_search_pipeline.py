"""Countdown with particle Gibbs, RFG and discrete CFG through the real flow; RFG's reference checked at validate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from tiny_specs import run_flow

from diffpipe.flows.cli import main
from diffpipe.flows.plan import status
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import read_json

REPO = Path(__file__).resolve().parents[2]
SAMPLE = {"stage": "sample", "num_samples": 8, "scheduler": {"name": "BlockRefinementScheduler", "steps": 8,
                                                              "options": {"block_length": 4}}}


def countdown_spec(root: Path, searches: dict[str, dict]) -> dict:
    """Tiny Countdown: a pretrain with prompt dropout, a second checkpoint fine-tuned from it, search stages."""
    raw = yaml.safe_load((REPO / "pipelines" / "countdown.yaml").read_text())
    raw["name"] = "countdown_search_test"
    raw["data"].update(num_train=64, num_test=16)
    raw["model"] = {"arch": "mdlm", "d_model": 16, "num_layers": 1, "num_heads": 2}
    pretrain = {**raw["stages"][0], "steps": 12, "batch_size": 32, "checkpoint_every": 6, "log_every": 6,
                "warmup_steps": 2, "cond_dropout": 0.2}
    policy = {**pretrain, "name": "policy", "init": "pretrain", "steps": 6}
    stages = [pretrain, policy]
    for name, search in searches.items():
        stages.append({**copy.deepcopy(SAMPLE), "name": name, "model": "policy", "search": search})
    stages.append({"name": "evaluate_pg", "stage": "evaluate", "samples": "pg", "metrics": ["domain"]})
    raw["stages"] = stages
    raw["storage"] = {"root": str(root)}
    raw["runtime"] = {"device": "cpu", "seed": 0}
    return raw


SEARCHES = {
    "pg": {"method": "particle_gibbs", "reward": "exact_verifier", "particles": 2, "iterations": 2},
    "rfg": {"method": "rfg", "reference": "pretrain", "weight": 1.0},
    "cfg": {"method": "discrete_cfg", "weight": 1.0, "schedule": "smooth"},
    "bon": {"method": "best_of_n", "reward": "countdown_closeness", "particles": 2},
}


def test_masked_searches_run_through_the_flow_and_report_their_cost(tmp_path: Path, prefect_api) -> None:

    raw = countdown_spec(tmp_path / "artifacts", SEARCHES)
    summary = run_flow(raw)
    assert all(s["state"] == "executed" for s in summary)
    spec = validate_spec(copy.deepcopy(raw))
    store = ArtifactStore(spec.storage.root)
    rows = {r.name: r for r in status(spec, store)}
    metrics = {n: read_json(store.local_path(rows[n].ref) / "metrics.json") for n in (*SEARCHES, "evaluate_pg")}
    assert metrics["pg"]["nfe_per_sample"] == 2 * 2 * 8 and metrics["rfg"]["nfe_per_sample"] == 2 * 8
    assert metrics["cfg"]["nfe_per_sample"] == 2 * 8 and metrics["bon"]["nfe_per_sample"] == 2 * 8
    assert all(m["flops_per_evaluation"] > 0 for n, m in metrics.items() if n in SEARCHES)
    assert 0.0 <= metrics["evaluate_pg"]["model"]["accuracy"] <= 1.0
    assert metrics["evaluate_pg"]["sampling_costs"]["search"] == "particle_gibbs"
    # RFG reads its reference: the reference's digest is part of the sample stage's key
    assert rows["rfg"].ref is not None and "reference" in {n for n, _ in spec.upstream(spec.stage("rfg")).items()}


@pytest.mark.parametrize(
    ("search", "where"),
    [
        ({"method": "rfg", "weight": 1.0}, "stages[2].search.reference"),
        ({"method": "rfg", "reference": "policy"}, "stages[2].search.reference"),
        ({"method": "rfg", "reference": "nosuch"}, "stages[2].reference"),
        ({"method": "fk_steering", "reward": "exact_verifier"}, "stages[2].search.method"),
        ({"method": "particle_gibbs", "reward": "ink"}, "stages[2].search.reward"),
    ],
)
def test_masked_search_specs_that_cannot_run_exit_2(tmp_path: Path, search: dict, where: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    raw = countdown_spec(tmp_path / "artifacts", {"pg": search})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    assert where in capsys.readouterr().err

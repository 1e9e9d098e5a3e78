"""The CEI domain through the real flow: a tiny pipeline, caching of the data build, .xyz evaluation, bad stores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
import zarr  # noqa: E402
from distributed import LocalCluster  # noqa: E402
from tiny_specs import rl_log_first  # noqa: E402
from tiny_specs import run_spec as run  # noqa: E402

from diffpipe.errors import DataError  # noqa: E402
from diffpipe.flows.cli import main  # noqa: E402
from diffpipe.flows.plan import status  # noqa: E402
from diffpipe.flows.spec_loading import validate_spec  # noqa: E402
from diffpipe.schemas.cei import CeiDetector, CeiTraining, CoulombExplosionData  # noqa: E402
from diffpipe.storage import ArtifactStore  # noqa: E402
from diffpipe.storage.formats import read_json  # noqa: E402
from diffpipe.tasks.data.cei.batches import ChunkedEventBatches  # noqa: E402
from diffpipe.tasks.data.cei.build import build_cei_dataset  # noqa: E402
from diffpipe.tasks.data.cei.rewards import ROUND_TRIP_CAP  # noqa: E402
from diffpipe.tasks.nets.atom_transformer import AtomTransformer  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY_STAGES = {
    "diffusion": {"steps": 16, "batch_size": 16, "checkpoint_every": 8, "log_every": 8, "warmup_steps": 2},
    "baseline": {"steps": 12, "batch_size": 16, "checkpoint_every": 6, "log_every": 6, "warmup_steps": 2},
    "sample_diffusion": {"num_samples": 6, "samples_per_condition": 3, "batch_size": 9,
                         "scheduler": {"name": "FlowMatchEulerDiscreteScheduler", "steps": 3,
                                       "options": {"stochastic_sampling": True}}},
    "sample_baseline": {"num_samples": 6},
}


@pytest.fixture(scope="module")
def dask_address():
    """An in-process Dask scheduler (worker processes would take tens of seconds to start)."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def tiny_cei_spec(root: Path, dask_address: str) -> dict:
    """The shipped quick profile shrunk to seconds: 2-3 atom molecules, a 16-wide network, tens of steps."""
    spec = yaml.safe_load((REPO / "pipelines" / "cei.yaml").read_text())
    spec["data"].update(max_atoms=3, elements=["H", "C", "N", "O"], geometries_per_molecule=4,
                        events_per_chunk=16, test_fraction=0.3, distortion_probability=0.0)
    spec["data"]["detector"] = {"momentum_resolution_rel": 0.01, "ion_loss_probability": 0.2}
    spec["model"] = {"arch": "atom_transformer", "width": 16, "depth": 1, "heads": 2}
    for stage in spec["stages"]:
        stage.update(copy.deepcopy(TINY_STAGES.get(stage["name"], {})))
    spec["storage"] = {"root": str(root)}
    spec["runtime"] = {"device": "cpu", "seed": 0, "dask_address": dask_address}
    return spec




@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, dask_address, prefect_api):
    """One tiny CEI pipeline run: (spec dict, summary by stage, artifact store)."""
    root = tmp_path_factory.mktemp("cei-pipeline")
    raw = tiny_cei_spec(root / "artifacts", dask_address)
    summary = run(raw)
    return raw, summary, ArtifactStore(str(root / "artifacts"))


def artifact(store: ArtifactStore, entry: dict) -> Path:
    """Local folder of a summary entry's artifact."""
    return store.local_path(store.lookup(entry["cache_key"]))


def test_schema_mirrors_the_builder_one_to_one():
    runtime_only = {"store_path", "n_workers", "dask_address", "client", "bars"}
    builder = set(inspect.signature(build_cei_dataset).parameters) - runtime_only
    assert set(CoulombExplosionData().builder_options()) == builder


def test_tiny_pipeline_end_to_end(tiny_run):
    raw, summary, store = tiny_run
    assert {s["state"] for s in summary.values()} == {"executed"}
    data = read_json(artifact(store, summary["data"]) / "metrics.json")
    assert data["n_test_events"] > 0 and data["position_scale_bohr"] > 0.5
    diffusion = read_json(artifact(store, summary["evaluate_diffusion"]) / "metrics.json")
    baseline = read_json(artifact(store, summary["evaluate_baseline"]) / "metrics.json")
    assert diffusion["draws_per_event"] == 3 and baseline["draws_per_event"] == 1
    overall = diffusion["sample"]["overall"]
    assert overall["n_events"] == 6 and 0.0 <= overall["coverage_0.9"] <= 1.0
    assert np.isfinite([overall["mae_frame_bohr"], overall["rmsd_bohr"], overall["momentum_rel_error"]]).all()
    assert set(diffusion["sample"]["per_molecule"]) <= set(data["test_molecules"])
    assert "sample_mean" in diffusion and "sample_mean" not in baseline
    assert (artifact(store, summary["evaluate_diffusion"]) / "geometries.png").stat().st_size > 5000
    model = AtomTransformer.from_pretrained(artifact(store, summary["baseline"]) / "model")
    assert model.config.deterministic and model.config.width == 16
    assert not AtomTransformer.from_pretrained(artifact(store, summary["diffusion"]) / "model").config.deterministic


def test_builder_options_decide_the_data_artifact(tiny_run):
    raw, summary, store = tiny_run
    assert {s["state"] for s in run(raw).values()} == {"cached"}
    changed = copy.deepcopy(raw)
    changed["data"]["displacement_sigma_bohr"] = 0.15
    changed["stages"] = [changed["stages"][1]]  # the baseline alone: it reads the data
    rows = {r.name: r for r in status(validate_spec(copy.deepcopy(changed)), store)}
    assert rows["data"].state == "stale" and any("displacement_sigma_bohr" in r for r in rows["data"].reasons)
    rerun = run(changed)
    assert rerun["data"]["state"] == "executed" and rerun["baseline"]["state"] == "executed"
    assert rerun["data"]["artifact"]["sha256"] != summary["data"]["artifact"]["sha256"]


def test_evaluate_xyz_folder_reports_bad_files(tiny_run, tmp_path, capsys):
    raw, _, _ = tiny_run
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "water.xyz").write_text("3\nwater\nO 0 0 0.119\nH 0 0.763 -0.477\nH 0 -0.763 -0.477\n")
    (folder / "hcn.xyz").write_text("3\nHCN\nC 0 0 -0.5\nN 0 0 0.65\nH 0 0 -1.57\n")
    (folder / "broken.xyz").write_text("3\nnot enough atom lines\nO 0 0 0\n")
    spec_file = tmp_path / "cei.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    code = main(["evaluate", str(spec_file), "--xyz", str(folder), "--events", "3", "--json",
                 "--out", str(tmp_path / "report")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["molecules"] == ["hcn", "water"]
    assert len(report["rejected"]) == 1 and "broken.xyz" in report["rejected"][0]
    for stage in ("sample_diffusion", "sample_baseline"):
        scores = report["stages"][stage]["sample"]
        assert set(scores["per_molecule"]) == {"hcn", "water"} and scores["overall"]["n_events"] == 6
    assert (tmp_path / "report" / "report.json").exists()
    assert (tmp_path / "report" / "sample_diffusion_geometries.png").exists()
    assert main(["evaluate", str(spec_file), "--xyz", str(tmp_path / "missing")]) == 2


def test_store_from_an_incompatible_builder_is_a_clear_data_error(tiny_run, tmp_path):
    _, summary, store = tiny_run
    copied = tmp_path / "events.zarr"
    shutil.copytree(artifact(store, summary["data"]) / "events.zarr", copied)
    group = zarr.open_group(str(copied), mode="r+")
    group.attrs["cei_builder_version"] = "0.9"
    with pytest.raises(DataError, match="incompatible CEI builder") as info:
        ChunkedEventBatches(str(copied), 1.0, CeiDetector(), CeiTraining(), torch.device("cpu"))
    assert str(copied) in info.value.where and "0.9" in info.value.found


def test_rl_with_the_physics_round_trip_reward(tiny_run):
    raw, _, store = tiny_run
    raw = copy.deepcopy(raw)
    sample = next(s for s in raw["stages"] if s["name"] == "sample_diffusion")
    raw["stages"] = [raw["stages"][0],
                     {"name": "rl", "stage": "rl", "init": "diffusion", "rewards": [{"name": "physics_round_trip"}],
                      "algorithm": {"algorithm": "diffusion_nft", "sampler_steps": 3, "train_timesteps": 2},
                      "group_size": 2, "groups_per_step": 2, "steps": 2, "checkpoint_every": 1, "log_every": 1},
                     {**sample, "name": "sample_rl", "model": "rl"},
                     {"name": "evaluate_rl", "stage": "evaluate", "samples": "sample_rl"}]
    summary = run(raw)
    assert summary["diffusion"]["state"] == "cached"
    assert [summary[n]["state"] for n in ("rl", "sample_rl", "evaluate_rl")] == ["executed"] * 3
    reward = summary["rl"]["metrics"]["reward/physics_round_trip"]
    # the summary is the reward log's first tenth, and the physics ran: not every geometry scored the collision cap
    assert reward["first"] == pytest.approx(rl_log_first(raw["storage"]["root"], summary["rl"],
                                                         "reward/physics_round_trip"), rel=1e-12)
    assert -ROUND_TRIP_CAP < reward["first"] < 0
    overall = read_json(artifact(store, summary["evaluate_rl"]) / "metrics.json")["sample"]["overall"]
    assert np.isfinite([overall["mae_frame_bohr"], overall["momentum_rel_error"]]).all()


def test_cmt_and_meanflow_on_the_atom_transformer_sample_in_one_and_two_steps(tiny_run):
    raw, _, store = tiny_run
    raw = copy.deepcopy(raw)
    sample = next(s for s in raw["stages"] if s["name"] == "sample_diffusion")
    tiny = {"steps": 3, "batch_size": 8, "checkpoint_every": 2, "log_every": 1, "cond_dropout": 0.0}
    raw["stages"] = [raw["stages"][0],
                     {"name": "cmt", "stage": "midtrain", "method": "cmt", "solver_steps": 4, **tiny},
                     {"name": "distill", "stage": "distill", "method": "meanflow", "init": "cmt", **tiny}]
    for steps in (1, 2):
        raw["stages"] += [{**sample, "name": f"sample_{steps}", "model": "distill",
                           "scheduler": {"name": "FlowMapEulerDiscreteScheduler", "steps": steps}},
                          {"name": f"evaluate_{steps}", "stage": "evaluate", "samples": f"sample_{steps}"}]
    summary = run(raw)
    assert summary["diffusion"]["state"] == "cached"
    assert {summary[n]["state"] for n in summary if n not in ("data", "diffusion")} == {"executed"}
    assert [summary[f"sample_{k}"]["metrics"]["nfe_per_sample"] for k in (1, 2)] == [1, 2]
    assert summary["cmt"]["metrics"]["flops_per_step"] > 0
    for steps in (1, 2):
        overall = read_json(artifact(store, summary[f"evaluate_{steps}"]) / "metrics.json")["sample"]["overall"]
        assert np.isfinite([overall["mae_frame_bohr"], overall["momentum_rel_error"]]).all()

"""The climate domain through the real Prefect flow: builder -> emulator + UNet -> ensemble -> scores with
pattern scaling and floors; ClimateBench files -> the same; bad files surface as DataErrors of the data node."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from climate_helpers import SCENARIO_YEARS, climatebench_pair, write_pair  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402
from tiny_specs import rl_log_first  # noqa: E402
from tiny_specs import run_spec as run  # noqa: E402

from diffpipe.errors import DataError, SpecError  # noqa: E402
from diffpipe.flows.graph import GraphFailed  # noqa: E402
from diffpipe.flows.plan import status  # noqa: E402
from diffpipe.flows.spec_loading import validate_spec  # noqa: E402
from diffpipe.schemas.climate import ClimateBuilderSource  # noqa: E402
from diffpipe.storage import ArtifactStore  # noqa: E402
from diffpipe.storage.formats import read_json  # noqa: E402
from diffpipe.tasks.context import StageContext  # noqa: E402
from diffpipe.tasks.data.climate import ClimateBuildOptions, ClimateSamples  # noqa: E402
from diffpipe.tasks.data.climate.batches import CachedBatches, static_channels  # noqa: E402
from diffpipe.tasks.data.climate.domain import ClimateDomain, pad_grid  # noqa: E402
from diffpipe.tasks.data.climate.stream import ChunkStream  # noqa: E402

pytestmark = pytest.mark.slow

TRAIN = {"steps": 12, "batch_size": 8, "checkpoint_every": 6, "log_every": 6, "warmup_steps": 2,
         "cond_dropout": 0.0, "lr": 2e-3}


def climate_spec(root: Path, data: dict) -> dict:
    """A tiny climate pipeline: emulator and UNet, their samples and evaluations."""
    return {
        "name": "climate-test",
        "data": {"kind": "climate", **data},
        "model": {"arch": "unet2d", "block_out_channels": [8, 16, 16], "norm_num_groups": 4, "attention": False},
        "stages": [
            {"name": "emulator", "stage": "pretrain", "objective": {"kind": "flow_matching"}, **TRAIN},
            {"name": "unet", "stage": "pretrain", "objective": {"kind": "regression"}, **TRAIN},
            {"name": "ens", "stage": "sample", "model": "emulator", "num_samples": 3,
             "scheduler": {"name": "FlowMatchEulerDiscreteScheduler", "steps": 2}},
            {"name": "det", "stage": "sample", "model": "unet"},
            {"name": "eval_ens", "stage": "evaluate", "samples": "ens", "metrics": ["domain"]},
            {"name": "eval_det", "stage": "evaluate", "samples": "det", "metrics": ["domain"]},
        ],
        "runtime": {"device": "cpu", "seed": 0, "dask_workers": 1},
        "storage": {"root": str(root)},
    }


def builder_data() -> dict:
    """Builder source on an 8 x 10 grid (padded to 8 x 12 by the 3-level UNet), 3 scenarios, 3 members.

    The memory budget (0.5 MB) is below the training split (1.2 MB), so training streams from zarr.
    """
    return {"source": {"kind": "builder", "nlat": 8, "nlon": 10, "members": 3,
                       "scenarios": ["historical", "ssp126", "ssp245"]},
            "train_scenarios": ["historical", "ssp126"], "memory_budget_mb": 0.5}




@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, prefect_api) -> tuple[dict, dict[str, dict]]:
    """The tiny builder pipeline, run once for the module."""
    raw = climate_spec(tmp_path_factory.mktemp("climate") / "artifacts", builder_data())
    return raw, run(raw)


def test_builder_schema_mirrors_the_builder_options() -> None:
    options = {f.name: f.default for f in dataclasses.fields(ClimateBuildOptions)}
    for dask_option in ("dask_address", "dask_workers"):
        options.pop(dask_option)
    schema = ClimateBuilderSource.model_fields
    assert set(schema) - {"kind"} == set(options)
    for name, default in options.items():
        assert schema[name].default == default, name
        assert schema[name].description, name


def test_split_is_checked_in_the_spec(tmp_path: Path) -> None:
    raw = climate_spec(tmp_path, builder_data())
    raw["data"]["test_scenario"] = "ssp126"
    with pytest.raises(SpecError, match="also in train_scenarios"):
        validate_spec(raw)
    raw = climate_spec(tmp_path, builder_data())
    raw["data"]["train_scenarios"] = ["historical", "ssp585"]
    with pytest.raises(SpecError, match="ssp585"):
        validate_spec(raw)


def test_pipeline_scores_emulator_pattern_scaling_and_unet(built: tuple[dict, dict[str, dict]]) -> None:
    raw, nodes = built
    assert all(entry["state"] == "executed" for entry in nodes.values())
    ens, det = nodes["eval_ens"]["metrics"], nodes["eval_det"]["metrics"]
    assert ens["members"] == 3 and det["members"] == 1 and ens["target_members"] == 3
    for scores in (ens, det):
        for source in ("model", "pattern_scaling", "internal_variability_floor"):
            tas = scores[source]["tas"]
            assert np.isfinite([tas["nrmse_total"], tas["crps"]]).all(), source
            assert tas["nrmse_total"] == pytest.approx(tas["nrmse_spatial"] + 5 * tas["nrmse_global"])
        assert set(scores["model"]) == {"tas", "diurnal_temperature_range", "pr", "pr90"}
    assert ens["model"]["tas"]["spread"] > 0 and det["model"]["tas"]["spread"] == 0
    assert det["model"]["tas"]["crps"] == pytest.approx(det["model"]["tas"]["crps_skill_term"])
    assert ens["pattern_scaling"] == det["pattern_scaling"]
    assert len(ens["model"]["tas"]["rank_histogram"]) == 4 and len(det["model"]["tas"]["rank_histogram"]) == 2

    spec = validate_spec(copy.deepcopy(raw))
    store = ArtifactStore(spec.storage.root)
    refs = {r.name: r.ref for r in status(spec, store)}
    samples = xr.open_zarr(store.local_path(refs["ens"]) / "samples.zarr", consolidated=False)
    assert samples["tas"].dims == ("time", "member", "lat", "lon")
    assert samples["tas"].shape == (86, 3, 8, 10) and samples["time"].values[0] == 2015
    assert samples["tas"].attrs["units"] == "K" and np.isfinite(samples["tas"].values).all()
    evaluation = store.local_path(refs["eval_ens"])
    for png in ("map_tas.png", "series_tas.png", "map_pr.png", "series_pr.png"):
        assert (evaluation / png).stat().st_size > 5000, png
    assert read_json(evaluation / "metrics.json")["model"]["tas"]["crps"] == ens["model"]["tas"]["crps"]
    unet = UNet2DModel.from_pretrained(store.local_path(refs["emulator"]) / "model")
    assert unet.config.class_embed_type == "timestep" and unet.config.in_channels == 4 + 7
    assert tuple(unet.config.sample_size) == (8, 12)


def test_training_streamed_and_its_batches_match_the_cache(built: tuple[dict, dict[str, dict]]) -> None:
    raw, _ = built
    spec = validate_spec(copy.deepcopy(raw))
    store = ArtifactStore(spec.storage.root)
    refs = {r.name: r.ref for r in status(spec, store)}
    path = store.local_path(refs["data"]) / "climate.zarr"
    ctx = StageContext(spec, "emulator", "0" * 64, {"data": refs["data"]}, store, path.parent)
    stream = ClimateDomain().batches(ctx, torch.device("cpu"))
    assert isinstance(stream, ChunkStream) and stream.shape.window < len(stream.reads)
    samples = ClimateSamples(path, ["historical", "ssp126"])
    static = static_channels(np.linspace(-90, 90, 8), np.arange(10) * 36.0)
    cached = CachedBatches(samples, static, torch.device("cpu"))
    position = {int(r): i for i, r in enumerate(samples.records)}
    batch = stream.take(torch.Generator(), 8)
    x, forcing = batch.target, batch.forcing
    idx = torch.tensor([position[int(r)] for r in batch.ids])
    torch.testing.assert_close(cached.target[idx], x)
    torch.testing.assert_close(cached.forcing[idx].channels(), forcing.channels())
    torch.testing.assert_close(cached.forcing.year[idx], forcing.year)
    stream.close()

    spec.stages[0].cond_dropout = 0.1
    with pytest.raises(SpecError, match=r"stages\[0\].cond_dropout"):
        ClimateDomain().batches(ctx, torch.device("cpu"))


def test_padding_is_periodic_in_longitude() -> None:
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(1, 2, 5, 6)
    out = pad_grid(x, 4)
    assert out.shape == (1, 2, 8, 8)
    torch.testing.assert_close(out[..., :5, 6:], x[..., :2])
    torch.testing.assert_close(out[..., 5:, :6], x[..., 4:5, :].expand(-1, -1, 3, -1))


def files_spec(root: Path, folder: Path) -> dict:
    """A tiny pipeline on ClimateBench files (4 x 6 grid, 2 members), evaluated on 2016-2019."""
    raw = climate_spec(root, {"source": {"kind": "files", "uri": str(folder)},
                              "train_scenarios": ["historical", "ssp126"], "evaluation_period": [2016, 2019]})
    raw["stages"] = [raw["stages"][1], raw["stages"][3], raw["stages"][5]]
    return raw


def test_climatebench_files_pipeline_and_bad_inputs(tmp_path: Path, prefect_api) -> None:
    folder = tmp_path / "climatebench"
    folder.mkdir()
    for i, name in enumerate(SCENARIO_YEARS):
        write_pair(folder, name, climatebench_pair(name, seed=i))
    nodes = run(files_spec(tmp_path / "ok", folder))
    tas = nodes["eval_det"]["metrics"]["model"]["tas"]
    assert np.isfinite(tas["nrmse_total"]) and nodes["data"]["metrics"]["grid"] == [4, 6]

    bad = tmp_path / "bad"
    bad.mkdir()
    for i, name in enumerate(SCENARIO_YEARS):
        inputs, outputs = climatebench_pair(name, seed=i)
        if name == "ssp126":
            outputs = outputs.drop_vars("pr90")
        write_pair(bad, name, (inputs, outputs))
    root = tmp_path / "bad_artifacts"
    with pytest.raises(GraphFailed) as info:
        run(files_spec(root, bad))
    error = info.value.__cause__
    assert info.value.exit_code == 2 and isinstance(error, DataError)
    assert "outputs_ssp126.nc" in error.where and "pr90" in error.where
    assert not any(root.rglob("climate.zarr")), "nothing half-written"

    (bad / "outputs_ssp126.nc").unlink()
    (bad / "inputs_ssp126.nc").unlink()
    with pytest.raises(GraphFailed) as info:
        run(files_spec(root, bad))
    error = info.value.__cause__
    assert info.value.exit_code == 2 and isinstance(error, DataError)
    assert str(bad) in error.where and "ssp126" in error.problem


def test_rl_on_the_emulator_with_the_global_mean_response_reward(built: tuple[dict, dict[str, dict]]) -> None:
    raw, _ = built
    raw = copy.deepcopy(raw)
    raw["stages"] = raw["stages"][:1] + [
        {"name": "rl", "stage": "rl", "init": "emulator", "rewards": [{"name": "global_mean_response"}],
         "algorithm": {"algorithm": "diffusion_nft", "sampler_steps": 3, "train_timesteps": 2},
         "group_size": 2, "groups_per_step": 2, "steps": 2, "checkpoint_every": 1, "log_every": 1, "lr": 1e-4},
        {"name": "ens_rl", "stage": "sample", "model": "rl", "num_samples": 2,
         "scheduler": {"name": "FlowMatchEulerDiscreteScheduler", "steps": 2}},
        {"name": "eval_rl", "stage": "evaluate", "samples": "ens_rl", "metrics": ["domain"]},
    ]
    nodes = run(raw)
    assert nodes["emulator"]["state"] == "cached"
    assert [nodes[n]["state"] for n in ("rl", "ens_rl", "eval_rl")] == ["executed"] * 3
    reward = nodes["rl"]["metrics"]["reward/global_mean_response"]
    # the summary is the reward log's first tenth, and the judge scored real fields: a miss of a kelvin or
    # less of global-mean tas (normalised fields), not 0 (a constant reward) and not NaN
    assert reward["first"] == pytest.approx(rl_log_first(raw["storage"]["root"], nodes["rl"],
                                                         "reward/global_mean_response"), rel=1e-12)
    assert -1.0 < reward["first"] < 0
    assert np.isfinite(nodes["eval_rl"]["metrics"]["model"]["tas"]["crps"])


def test_cmt_and_meanflow_on_the_emulator_keep_the_year_embedding(built: tuple[dict, dict[str, dict]]) -> None:
    from diffpipe.tasks.nets.flowmap import FlowMapNet

    raw, _ = built
    raw = copy.deepcopy(raw)
    tiny = {"steps": 2, "batch_size": 4, "checkpoint_every": 1, "log_every": 1, "cond_dropout": 0.0}
    raw["stages"] = raw["stages"][:1] + [
        {"name": "cmt", "stage": "midtrain", "method": "cmt", "solver_steps": 2, **tiny},
        {"name": "distill", "stage": "distill", "method": "meanflow", "init": "cmt", **tiny},
        {"name": "ens_2", "stage": "sample", "model": "distill", "num_samples": 2,
         "scheduler": {"name": "FlowMapEulerDiscreteScheduler", "steps": 2}},
        {"name": "eval_2", "stage": "evaluate", "samples": "ens_2", "metrics": ["domain"]},
    ]
    nodes = run(raw)
    assert nodes["emulator"]["state"] == "cached"
    assert [nodes[n]["state"] for n in ("cmt", "distill", "ens_2", "eval_2")] == ["executed"] * 4
    assert nodes["ens_2"]["metrics"]["nfe_per_sample"] == 2
    assert np.isfinite(nodes["eval_2"]["metrics"]["model"]["tas"]["crps"])
    store = ArtifactStore(raw["storage"]["root"])
    model = FlowMapNet.from_pretrained(store.local_path(store.lookup(nodes["distill"]["cache_key"])) / "model")
    assert model.base.config.class_embed_type == "timestep"

"""Sweeps: every cell validated before anything runs, shared stages computed once, the comparison files."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import yaml
from tiny_specs import run_flow

from diffpipe.flows.cli import main
from diffpipe.flows.comparison import MAX_DEFAULT_PLOTS, default_headline
from diffpipe.flows.graph import GraphFailed


def _spec_file(tmp_path: Path, tiny_spec: dict, sweep: dict | None = None) -> Path:
    raw = copy.deepcopy(tiny_spec)
    raw["stages"][0].update(steps=8, checkpoint_every=8)
    if sweep is not None:
        raw["sweep"] = sweep
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("grid", "message"), [
    ("stages.evaluate.nosuch=[1,2]", "sweep cell c00 (nosuch=1,seed=0): stages[2].nosuch: unknown field"),
    ("stages.sample.num_samples=[10,-1]", "sweep cell c01 (num_samples=-1,seed=0): stages[1].num_samples: Input"),
    ("stages.sample.scheduler.name=[EDMEulerScheduler]", "sweep cell c00 (name=EDMEulerScheduler,seed=0): "
                                                        "stages[1].scheduler.name: scheduler does not fit"),
    ("stages.sample.num_samples=[]", "--grid stages.sample.num_samples: empty grid axis"),
    ("stages.sample.num_samples=12", "--grid stages.sample.num_samples: the values must be a list"),
    ("stages.sample.num_samples=[10,10]", "sweep cell c01 (num_samples=10,seed=0): storage.root: collides with "
                                          "cell c00"),
    ("stages.nosuch.steps=[1]", "sweep cell c00 (steps=1,seed=0): stages.nosuch.steps (stages.nosuch): no list item"),
])
def test_bad_grids_exit_2_naming_cell_and_field(tiny_spec: dict, tmp_path: Path, grid: str, message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = _spec_file(tmp_path, tiny_spec)
    code = main(["sweep", str(path), "--grid", grid])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: {message}")
    assert not Path(tiny_spec["storage"]["root"]).exists()  # nothing ran, nothing written


def test_empty_sweep_block_and_colliding_roots(tiny_spec: dict, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", str(_spec_file(tmp_path, tiny_spec, {"grid": {}}))])
    assert code == 2 and "empty grid" in capsys.readouterr().err
    roots = [str(tmp_path / "r"), str(tmp_path / "x" / ".." / "r")]  # two spellings of one root
    code = main(["sweep", str(_spec_file(tmp_path, tiny_spec, {"grid": {"storage.root": roots}}))])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: sweep cell c01") and "collides with cell c00" in err
    assert not (tmp_path / "r").exists()


def test_default_plots_are_the_overall_headline_scores_and_few() -> None:
    # a CEI-like spec: 20 evaluate stages, each with overall and per-molecule scores
    metrics = sorted(f"evaluate_{i:02d}.sample.{where}.{name}" for i in range(20)
                     for where in ("overall", "by_molecule.h2o.x")
                     for name in ("mae_frame_bohr", "rmsd_bohr", "coverage_0.9", "n_events"))
    metrics += ["evaluate_00.data_floor.mae_frame_bohr", "pretrain.final_loss"]
    chosen = default_headline(metrics, {f"evaluate_{i:02d}" for i in range(20)})
    assert len(chosen) == MAX_DEFAULT_PLOTS
    assert all(".overall." in m and m.endswith(("mae_frame_bohr", "rmsd_bohr")) for m in chosen)
    assert default_headline(["evaluate.model.frechet_distance", "evaluate.model.n"], {"evaluate"}) == [
        "evaluate.model.frechet_distance"]
    assert default_headline(["evaluate.model.n"], {"evaluate"}) == ["evaluate.model.n"]  # no headline name: all


@pytest.mark.slow
def test_sweep_shares_stages_and_compares(tiny_spec: dict, tmp_path: Path, prefect_api,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    sweep = {"grid": {"stages.sample.num_samples": [20, 30]}, "repeat_seeds": 2,
             "metrics": ["evaluate.model.frechet_distance"]}
    path = _spec_file(tmp_path, tiny_spec, sweep)
    assert main(["sweep", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["label"] for c in report["cells"]] == ["num_samples=20,seed=0", "num_samples=20,seed=1",
                                                     "num_samples=30,seed=0", "num_samples=30,seed=1"]
    executed = {stage: sum(c["states"][stage] == "executed" for c in report["cells"])
                for stage in ("data", "pretrain", "sample", "evaluate")}
    assert executed == {"data": 2, "pretrain": 2, "sample": 4, "evaluate": 4}  # one pretrain per seed
    group = report["groups"][0]
    fd = [c["metrics"]["evaluate.model.frechet_distance"] for c in report["cells"][:2]]
    stats = group["metrics"]["evaluate.model.frechet_distance"]
    assert group["seeds"] == [0, 1] and stats["n"] == 2 and stats["mean"] == pytest.approx(sum(fd) / 2)
    assert stats["std"] == pytest.approx(abs(fd[0] - fd[1]) / 2 ** 0.5)
    assert not any("wall_s" in m for m in report["metrics"])  # timings stay out of the comparison
    folder = Path(report["location"].removeprefix("file://"))
    rows = list(csv.DictReader((folder / "comparison.csv").read_text().splitlines()))
    assert [r["stages.sample.num_samples"] for r in rows] == ["20", "30"] and rows[0]["n"] == "2"
    assert float(rows[0]["evaluate.model.frechet_distance_mean"]) == pytest.approx(stats["mean"])
    assert (folder / "evaluate.model.frechet_distance.png").stat().st_size > 1000

    assert main(["status", str(path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {s["state"] for c in status["cells"] for s in c["stages"]} == {"cached"}
    assert main(["show", str(path)]) == 0
    assert "num_samples" in capsys.readouterr().out
    assert main(["show", str(path), "pretrain", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len({r["artifact"]["sha256"] for r in shown}) == 2  # one pretrain per seed, shared by two cells


@pytest.mark.slow
def test_a_failing_stage_fails_its_descendants_only(tiny_spec: dict, prefect_api) -> None:

    raw = copy.deepcopy(tiny_spec)
    pretrain, sample = raw["stages"][0], raw["stages"][1]
    pretrain.update(steps=8, checkpoint_every=8)
    raw["stages"] = [pretrain, {**pretrain, "name": "broken", "lr": 1e30},
                     {**sample, "name": "sample", "model": "pretrain"},
                     {**sample, "name": "sample_broken", "model": "broken"}]
    with pytest.raises(GraphFailed) as failed:
        run_flow(raw)
    states = {s["name"]: s["state"] for s in failed.value.summary[""]}
    assert states == {"data": "executed", "pretrain": "executed", "broken": "failed", "sample": "executed",
                      "sample_broken": "not run"}
    message = str(failed.value)
    assert message.startswith("stage 'broken' (pretrain) failed: FloatingPointError")
    assert "not run (they read a failed stage): sample_broken" in message

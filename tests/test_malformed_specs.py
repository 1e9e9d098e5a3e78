"""Malformed specs, tried as a hostile user would: every one stops at `diffpipe validate` with exit 2, naming the field.

Each case is a shipped or tiny spec, the `--set` overrides that break it, and the field path the one-line
error must name. `validate` runs the schema and the library checks (schedulers, rewards, the model
checked against the data it will see) and the distributed launch's checks (processes against the cores,
batches and rollout groups against the processes), the same path as `diffpipe run` before anything runs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from diffpipe.flows.cli import main

REPO = Path(__file__).resolve().parents[1]

CASES = [
    # (id, base spec, overrides, field path named in the error)
    ("infinite lr", "tiny", ["stages.pretrain.lr=.inf"], "stages[0].lr"),
    ("nan lr", "tiny", ["stages.pretrain.lr=.nan"], "stages[0].lr"),
    ("infinite guidance", "tiny", ["stages.sample.guidance_scale=.inf"], "stages[1].guidance_scale"),
    ("seed beyond 2^63", "tiny", ["runtime.seed=9223372036854775809"], "runtime.seed"),
    ("negative seed", "tiny", ["runtime.seed=-1"], "runtime.seed"),
    ("split seed beyond 2^32", "tiny", ["data.split_seed=4294967296"], "data.split_seed"),
    ("boolean steps", "tiny", ["stages.pretrain.steps=true"], "stages[0].steps"),
    ("string steps", "tiny", ["stages.pretrain.steps='5'"], "stages[0].steps"),
    ("fractional batch", "tiny", ["stages.pretrain.batch_size=2.5"], "stages[0].batch_size"),
    ("integer boolean", "tiny", ["data.class_conditional=1"], "data.class_conditional"),
    ("string boolean", "tiny", ["data.class_conditional='yes'"], "data.class_conditional"),
    ("boolean float", "tiny", ["stages.pretrain.weight_decay=false"], "stages[0].weight_decay"),
    ("no channels", "tiny", ["model.block_out_channels=[]"], "model.block_out_channels"),
    ("negative width", "tiny", ["model.block_out_channels=[-16, 32]"], "model.block_out_channels"),
    ("boolean width", "tiny", ["model.block_out_channels=[true, 32]"], "model.block_out_channels"),
    ("groups do not divide", "tiny", ["model.norm_num_groups=5"], "model.norm_num_groups"),
    ("too many levels for 8x8", "tiny", ["model.block_out_channels=[8, 8, 8, 8, 8]"], "model.block_out_channels"),
    ("patch does not divide", "tiny", ["model={arch: dit, patch_size: 3}"], "model.patch_size"),
    ("atom transformer on digits", "tiny", ["model={arch: atom_transformer}"], "model.arch"),
    ("class 42 of ten", "tiny", ["stages.sample.classes=[42]"], "stages[1].classes"),
    ("negative class", "tiny", ["stages.sample.classes=[-1]"], "stages[1].classes"),
    ("no classes", "tiny", ["stages.sample.classes=[]"], "stages[1].classes"),
    ("classes of unconditional data", "tiny", ["data.class_conditional=false", "stages.sample.classes=[1]"],
     "stages[1].classes"),
    ("negative bandwidth", "tiny", ["stages.evaluate.mmd_bandwidths=[-1.0]"], "stages[2].mmd_bandwidths"),
    ("test fraction leaves too few to train", "tiny", ["data.test_fraction=0.999"], "data.test_fraction"),
    ("test fraction holds out too few", "tiny", ["data.test_fraction=0.001"], "data.test_fraction"),
    ("misspelled scheduler", "tiny", ["stages.sample.scheduler.name=FlowMatchEulerDiscreteSchedular"],
     "stages[1].scheduler.name"),
    ("scheduler option that does not exist", "tiny", ["stages.sample.scheduler.options={warp: 2}"],
     "stages[1].scheduler.options.warp"),
    ("scheduler for another objective", "tiny", ["stages.sample.scheduler.name=DDIMScheduler"],
     "stages[1].scheduler.name"),
    ("unknown field", "tiny", ["stages.pretrain.learning_rate=0.1"], "stages[0].learning_rate"),
    ("zero steps", "tiny", ["stages.pretrain.steps=0"], "stages[0].steps"),
    ("ema decay above one", "tiny", ["stages.pretrain.ema_decay=1.5"], "stages[0].ema_decay"),
    ("zero threads", "tiny", ["runtime.num_threads=0"], "runtime.num_threads"),
    ("later reference", "tiny", ["stages.sample.model=evaluate"], "stages[1].model"),
    ("unknown objective", "tiny", ["stages.pretrain.objective={kind: magic}"], "stages[0].objective.kind"),
    ("misspelled reward", "digits_rl.yaml", ["stages.rl.rewards=[{name: classifier_logprb}]"],
     "stages[1].rewards[0].name"),
    ("reward of another domain", "digits_rl.yaml", ["stages.rl.rewards=[{name: exact_verifier}]"],
     "stages[1].rewards[0].name"),
    ("infinite reward weight", "digits_rl.yaml", ["stages.rl.rewards=[{name: ink, weight: .inf}]"],
     "stages[1].rewards[0].weight"),
    ("countdown block length 0", "countdown.yaml", ["stages.sample.scheduler.options.block_length=0"],
     "stages[4].scheduler.options.block_length"),
    ("countdown block length not an integer", "countdown.yaml",
     ["stages.sample.scheduler.options.block_length=2.5"], "stages[4].scheduler.options.block_length"),
    ("countdown rl block length 0", "countdown.yaml", ["stages.rl.algorithm.block_length=0"],
     "stages[3].algorithm.block_length"),
    ("countdown num_train beyond the problem space", "countdown.yaml", ["data.num_train=1000000"],
     "data.num_train"),
    ("countdown num_train beyond the reachable problems", "countdown.yaml", ["data.num_train=10000"],
     "data.num_train"),
    ("countdown num_test beyond the held-out problems", "countdown.yaml", ["data.num_test=500"], "data.num_test"),
    ("sudoku num_train beyond the 12-blank puzzles", "sudoku.yaml",
     ["data.min_blanks=12", "data.max_blanks=12", "data.num_train=30000"], "data.num_train"),
    ("sudoku num_test beyond the held-out puzzles", "sudoku.yaml", ["data.num_test=1000000"], "data.num_test"),
    ("unet on countdown", "countdown.yaml", ["model={arch: unet2d}"], "model.arch"),
    ("heads do not divide", "countdown.yaml", ["model.num_heads=5"], "model.num_heads"),
    ("climate seed beyond range", "climate.yaml", ["data.source.seed=-3"], "data.source.seed"),
    ("search on the climate pyramid", "climate_spf.yaml",
     ["stages.spf_samples.search={method: best_of_n, reward: global_mean_response, particles: 2}"],
     "stages[1].search.method"),
    ("digits reward on a climate search", "climate.yaml",
     ["stages.emulator_samples.search={method: fk_steering, reward: classifier_logprob}"],
     "stages[2].search.reward"),
    ("zero self-training generations", "rna_self_train.yaml", ["stages.self_train.generations=0"],
     "stages[1].generations"),
    ("real-data fraction above one", "rna_self_train.yaml", ["stages.self_train.real_fraction=1.5"],
     "stages[1].real_fraction"),
    ("negative real-data fraction", "rna_self_train.yaml", ["stages.self_train.real_fraction=-0.1"],
     "stages[1].real_fraction"),
    ("entropy selection on data without entropy features", "cei.yaml",
     ["stages=[{name: pretrain, stage: pretrain, objective: {kind: flow_matching}}, {name: st, stage: self_train, "
      "model: pretrain, selection: entropy, objective: {kind: flow_matching}}]"], "stages[1].selection"),
    ("tr2d2 search beyond the rollout budget", "rna_design.yaml",
     ["stages.rl.algorithm={algorithm: tr2d2, mcts_iterations: 4, num_children: 3}"],
     "stages[5].algorithm.num_children"),
    ("several draws per prompt from a search", "countdown.yaml",
     ["stages.sample.samples_per_condition=4", "stages.sample.search={method: best_of_n, reward: exact_verifier}"],
     "stages[4].samples_per_condition"),
    ("more processes than usable cores", "tiny", ["runtime.distributed.nproc_per_node=4096"],
     "runtime.distributed.nproc_per_node"),
    ("nccl on the CPU", "tiny", ["runtime.distributed={nproc_per_node: 2, backend: nccl}"],
     "runtime.distributed.backend"),
    ("global batch that does not split over the processes", "tiny",
     ["runtime.distributed.nproc_per_node=2", "stages.pretrain.batch_size=33"], "stages[0].batch_size"),
    ("rl groups that do not split over the processes", "digits_rl.yaml",
     ["runtime.distributed.nproc_per_node=2", "stages.rl.groups_per_step=3"], "stages[1].groups_per_step"),
    ("MARBLE under FSDP2", "digits_rl.yaml",
     ["runtime.distributed={nproc_per_node: 2, strategy: fsdp}", "stages.rl.combine=marble",
      "stages.rl.rewards=[{name: classifier_logprob}, {name: ink}]"], "runtime.distributed.strategy"),
]

SET_CASES = [
    ("override that is not YAML", ["stages.pretrain.lr=[1,"], "--set stages.pretrain.lr"),
    ("override with an empty path", ["=3"], "--set"),
    ("override without '='", ["stages.pretrain.lr"], "--set"),
    ("override of a missing stage", ["stages.nosuch.steps=1"], "--set stages.nosuch"),
]


def _spec_file(tmp_path: Path, base: str) -> Path:
    if base == "tiny":
        from tiny_specs import tiny_digits_spec

        raw = tiny_digits_spec(tmp_path / "artifacts")
    else:
        raw = copy.deepcopy(yaml.safe_load((REPO / "pipelines" / base).read_text()))
        raw["storage"] = {"root": str(tmp_path / "artifacts")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _validate(path: Path, overrides: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = ["validate", str(path)]
    for assignment in overrides:
        argv += ["--set", assignment]
    code = main(argv)
    return code, capsys.readouterr().err


def test_the_unbroken_bases_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for base in sorted({case[1] for case in CASES}):
        assert _validate(_spec_file(tmp_path, base), [], capsys) == (0, ""), base


@pytest.mark.parametrize(("base", "overrides", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_spec_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], base: str,
                                                 overrides: list[str], field: str) -> None:
    code, err = _validate(_spec_file(tmp_path, base), overrides, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), err


@pytest.mark.parametrize(("overrides", "field"), [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_malformed_override_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              overrides: list[str], field: str) -> None:
    code, err = _validate(_spec_file(tmp_path, "tiny"), overrides, capsys)
    assert code == 2 and err.startswith(f"error: {field}"), err

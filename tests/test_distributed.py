"""Training stages across real torchrun processes (gloo on the CPU) against the same stage in one process.

Tolerance of "the same weights": both runs see the same examples and noise (every step's loss agrees
to float32 rounding, checked), but a rank's forward and backward run on half the batch and the two
halves' gradients are summed by the all-reduce, so gradients differ from one process in the order
of float sums (~1e-7 relative). Adam divides by sqrt(v), which lifts such differences for parameters
whose gradient is near zero; after 40 steps at lr 2e-3 the weights differ by ~1e-4 (measured), far
below the ~lr * steps = 0.08 a parameter moves, so the check is `atol=WEIGHT_ATOL`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
import xarray as xr
import yaml
from helpers import free_port
from safetensors.torch import load_file
from tiny_specs import REPO, tiny_digits_spec

from diffpipe.errors import InputError, StageError
from diffpipe.flows.plan import node_key, nodes
from diffpipe.flows.spec_loading import validate_spec
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import read_json
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.launch import launch, stage_function
from diffpipe.tasks.registry import get_domain

WEIGHT_ATOL = 1e-3
LOSS_RTOL = 1e-5
RL_WEIGHT_ATOL = 1e-4
FLOW_MAP_WEIGHT_ATOL = 1e-5
"""Flow-map losses after 4 steps: the two ranks' half-batch gradients summed in another order (measured below 1e-6)."""
"""Discrete RL: the rollouts agree to 1e-5, but the attention's key bias has an exactly zero gradient (softmax
ignores a shift), so Adam turns float noise of ~1e-9 into steps; measured up to 3e-5 at lr 1e-3."""
STEPS, EVERY = 40, 8
RL = {"name": "rl", "stage": "rl", "init": "pretrain", "group_size": 4, "groups_per_step": 2, "steps": 4,
      "checkpoint_every": 2, "log_every": 2, "lr": 1e-4, "algorithm": {"algorithm": "flow_grpo", "sampler_steps": 4},
      "rewards": [{"name": "classifier_logprob"}]}
DISCRETE_RL = {"steps": 4, "groups_per_step": 2, "group_size": 4, "checkpoint_every": 4, "log_every": 2, "lr": 1e-3,
               "algorithm": {"algorithm": "coupled_grpo", "num_iterations": 2, "block_length": 8, "rollout_steps": 4,
                             "temperature": 1.0}}
"""Sampled rollouts (temperature 1: the sampler's noise must be the same at both world sizes), mu = 2 (old
surrogates and two updates per batch); coupled_grpo's loss is a token mean over the whole batch and its
advantages are leave-one-out over each group, so a rank that saw only its own rows would get other numbers."""


def spec_dict(root: Path, **distributed) -> dict:
    """Tiny digits data -> pretrain (STEPS steps) -> rl, with `runtime.distributed` set."""
    raw = tiny_digits_spec(root)
    raw["stages"] = [raw["stages"][0], copy.deepcopy(RL)]
    raw["stages"][0].update({"steps": STEPS, "checkpoint_every": EVERY, "log_every": EVERY})
    raw["runtime"]["distributed"] = distributed
    return raw


def sudoku_spec_dict(root: Path, **distributed) -> dict:
    """Tiny 4x4 Sudoku data -> masked-diffusion pretrain -> discrete rl (DISCRETE_RL), with `runtime.distributed`.

    Sudoku's verifier gives partial credit (the share of blanks filled right), so even a barely trained
    model's rollouts get rewards that differ within groups, hence non-zero advantages."""
    raw = yaml.safe_load((REPO / "pipelines" / "sudoku.yaml").read_text())
    raw["data"].update(num_train=64, num_test=16)
    raw["model"] = {"arch": "mdlm", "d_model": 16, "num_layers": 1, "num_heads": 2}
    pretrain, rl = (next(s for s in raw["stages"] if s["name"] == name) for name in ("pretrain", "rl"))
    pretrain.update({"steps": 6, "batch_size": 32, "checkpoint_every": 6, "log_every": 6, "warmup_steps": 2})
    rl.update(copy.deepcopy(DISCRETE_RL))
    raw["stages"] = [pretrain, rl]
    raw["storage"] = {"root": str(root)}
    raw["runtime"] = {"device": "cpu", "seed": 0, "distributed": distributed}
    return raw


class Built:
    """The data artifact (built once) and a way to run a stage on it in one process or across processes."""

    def __init__(self, root: Path, make_spec: Callable[..., dict] = spec_dict):
        self.root, self.make_spec = root, make_spec
        self.spec = validate_spec(make_spec(root))
        self.store = ArtifactStore(self.spec.storage.root)
        data = nodes(self.spec)[0]
        key, _ = node_key(self.spec, data, {})
        with tempfile.TemporaryDirectory() as tmp:
            ctx = StageContext(self.spec, "data", key, {}, self.store, Path(tmp), progress=False)
            out = get_domain(data.kind).build(ctx)
            self.refs = {"data": self.store.publish(Path(tmp), out.kind, {"node": "data"})}

    def run(self, stage: str, key: str, logs: list[str] | None = None, extra: list[dict] | None = None,
            progress: list[tuple] | None = None, **distributed) -> dict:
        """Run `stage` (of the spec, or of `extra` stages appended to it) under cache key `key`: its outputs."""
        raw = self.make_spec(self.root, **distributed)
        raw["stages"] += copy.deepcopy(extra or [])
        spec = validate_spec(raw)
        node = next(n for n in nodes(spec) if n.name == stage)
        inputs = {name: self.refs[src] for name, src in node.upstream.items()}
        with tempfile.TemporaryDirectory() as tmp:
            ctx = StageContext(spec, stage, key, inputs, self.store, Path(tmp), progress=False,
                               log=(logs.append if logs is not None else print),
                               on_progress=None if progress is None else lambda *p: progress.append(copy.deepcopy(p)))
            out = stage_function(node.kind, spec.runtime)(ctx)
            result = {"weights": load_file(Path(tmp, "model", "diffusion_pytorch_model.safetensors")),
                      "metrics": out.metrics, "files": sorted(p.name for p in Path(tmp).iterdir())}
            online = Path(tmp, "model_online", "diffusion_pytorch_model.safetensors")
            if online.exists():  # with EMA
                result["online"] = load_file(online)
            if node.kind == "rl":
                result["log"] = read_json(Path(tmp, "reward_log.json"))
                result["rewards"] = result["log"]["reward"]
            else:
                result["losses"] = read_json(Path(tmp, "losses.json"))["losses"]
                self.refs.setdefault(stage, self.store.publish(Path(tmp), out.kind, {"node": stage}))
        return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Data built once; `one` holds the one-process pretrain run every distributed run is compared with."""
    b = Built(tmp_path_factory.mktemp("distributed") / "artifacts")
    b.one = b.run("pretrain", "one-process")
    return b


def assert_weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = WEIGHT_ATOL) -> None:
    """Same tensors, each within `atol`."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(built: Built, strategy: str) -> None:
    progress: list[tuple] = []
    two = built.run("pretrain", f"two-{strategy}", progress=progress, nproc_per_node=2, strategy=strategy)
    assert [p[0] for p in progress] == list(range(EVERY, STEPS + 1, EVERY))  # rank 0's progress reaches the UI hook
    assert progress[-1][2] == two["losses"]
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(built.one["losses"]), rtol=LOSS_RTOL, atol=0)
    assert_weights_close(two["weights"], built.one["weights"])
    assert_weights_close(two["online"], built.one["online"])
    assert two["metrics"]["processes"] == 2 and built.one["metrics"]["processes"] == 1
    assert two["metrics"]["flops_per_step"] == built.one["metrics"]["flops_per_step"]  # the ranks' halves add up
    assert two["files"] == built.one["files"]
    if strategy == "ddp":
        built.two = two


def rank_process(rank: int) -> psutil.Process | None:
    """The worker process of global rank `rank` among this test's descendants."""
    for p in psutil.Process().children(recursive=True):
        try:
            if p.environ().get("RANK") == str(rank) and "diffpipe.tasks.rank_worker" in p.cmdline():
                return p
        except psutil.Error:
            continue
    return None


@pytest.mark.slow
def test_killed_rank_ends_the_stage_and_the_rerun_resumes(built: Built) -> None:
    if not hasattr(built, "two"):
        built.two = built.run("pretrain", "two-ddp-again", nproc_per_node=2)
    failure: list[BaseException] = []

    def killed_run() -> None:
        try:
            built.run("pretrain", "killed", nproc_per_node=2)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            failure.append(e)

    thread = threading.Thread(target=killed_run)
    thread.start()
    run = built.store.run_dir("killed")
    deadline = time.monotonic() + 120
    while not [s for s in run.steps() if s >= 2 * EVERY]:
        assert thread.is_alive(), f"the run ended before it could be killed: {failure}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    victim = rank_process(1)
    assert victim is not None
    victim.kill()
    thread.join(timeout=120)
    assert len(failure) == 1 and isinstance(failure[0], StageError), failure
    message = str(failure[0])
    # torchrun reports the killed rank, or (when the agent saw the peer fail first) rank 0's broken connection
    killed_named = "rank 1 of 2" in message and "signal 9 (SIGKILL)" in message
    peer_named = "rank 0 of 2" in message and "by peer" in message
    assert killed_named or peer_named, message
    killed_at = max(run.steps())
    assert 0 < killed_at < STEPS
    assert rank_process(0) is None and rank_process(1) is None  # no rank outlives the stage

    logs: list[str] = []
    resumed = built.run("pretrain", "killed", logs=logs, nproc_per_node=2)
    assert f"pretrain: resumed from the checkpoint at step {killed_at}" in logs
    for folder in ("weights", "online"):
        assert_weights_close(resumed[folder], built.two[folder], atol=0)  # same world size: exactly the same
    assert resumed["losses"] == built.two["losses"]

    # the same checkpoints resumed in one process (another world size): full state dicts, same run
    other = built.store.run_dir("killed-one")
    shutil.copytree(run.path, other.path)
    one = built.run("pretrain", "killed-one")
    assert_weights_close(one["weights"], built.one["weights"])


@pytest.mark.slow
def test_two_nodes_on_loopback(tmp_path: Path, built: Built) -> None:
    """Two `diffpipe run` launchers (nnodes 2) meet at a c10d rendezvous on 127.0.0.1; node 0 publishes."""
    endpoint = f"127.0.0.1:{free_port()}"
    raw = spec_dict(tmp_path / "artifacts", nnodes=2, nproc_per_node=1, rdzv_endpoint=endpoint, rdzv_timeout_s=120)
    raw["stages"] = raw["stages"][:1]
    path = tmp_path / "two_nodes.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    cli = [sys.executable, "-m", "diffpipe.flows.cli", "run", str(path)]
    node0 = subprocess.Popen([*cli, "--json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    node1 = subprocess.Popen([*cli, "--set", "runtime.distributed.node_rank=1"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out0, err0 = node0.communicate(timeout=400)
    if node0.returncode != 0:  # node 1 would wait for node 0's artifacts for ever
        node1.kill()
        node1.communicate()
    assert node0.returncode == 0, err0[-3000:]
    out1, _ = node1.communicate(timeout=120)
    assert node1.returncode == 0, out1[-3000:]
    assert "every distributed stage is published" in out1
    stages = {s["name"]: s for s in json.loads(out0)["stages"]}
    assert stages["pretrain"]["metrics"]["processes"] == 2
    (weights,) = (tmp_path / "artifacts").glob("objects/*/*/model/*.safetensors")
    assert_weights_close(load_file(weights), built.one["weights"])


FLOW_MAP_STAGES = [
    {"name": "cmt", "stage": "midtrain", "method": "cmt", "steps": 4, "batch_size": 8, "checkpoint_every": 2,
     "trajectories": 4, "solver_steps": 4},
    {"name": "mf", "stage": "distill", "method": "meanflow", "init": "cmt", "steps": 4, "batch_size": 8,
     "checkpoint_every": 2},
    {"name": "cd", "stage": "distill", "method": "consistency", "init": "cmt", "steps": 4, "batch_size": 8,
     "checkpoint_every": 2}]
"""CMT solves 4 teacher trajectories a step (2 per rank) and regresses 8 state pairs; the distillations start
from its one-process checkpoint."""


@pytest.mark.parametrize("stage", ["cmt", "mf", pytest.param("cd", marks=pytest.mark.slow)])
def test_flow_map_stages_at_two_ranks(built: Built, stage: str) -> None:
    """midtrain (CMT), distill (MeanFlow, consistency distillation) through DDP: each loss draws the global
    batch's times and noise and computes this rank's rows (CMT: also its rows of the teacher's trajectories),
    so the weights are one process's to float rounding (the halves' gradients are summed in another order)
    and step 0's FLOPs summed over the ranks are one process's (a rank computing the whole batch would double
    them)."""
    if "cmt" not in built.refs:
        built.run("cmt", "cmt-one", extra=FLOW_MAP_STAGES)
    one = built.run(stage, f"{stage}-one", extra=FLOW_MAP_STAGES)
    two = built.run(stage, f"{stage}-two", extra=FLOW_MAP_STAGES, nproc_per_node=2)
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=LOSS_RTOL, atol=0)
    assert_weights_close(two["weights"], one["weights"], atol=FLOW_MAP_WEIGHT_ATOL)
    assert two["metrics"]["flops_per_step"] == one["metrics"]["flops_per_step"] > 0


def test_rl_stage_at_two_ranks(built: Built) -> None:
    """Rollouts split over two ranks, rewards gathered: the same reward log and weights as one process."""
    one = built.run("rl", "rl-one")
    two = built.run("rl", "rl-two", nproc_per_node=2)
    assert two["metrics"]["processes"] == 2
    assert [r is None for r in two["rewards"]] == [r is None for r in one["rewards"]]
    torch.testing.assert_close(torch.tensor([r for r in two["rewards"] if r is not None]),
                               torch.tensor([r for r in one["rewards"] if r is not None]), rtol=1e-4, atol=1e-5)
    assert_weights_close(two["weights"], one["weights"])


def test_row_sharded_model_splits_rows_and_gives_the_gradient_of_the_whole_batch(tmp_path: Path) -> None:
    """Two real ranks: each model call runs half the rows, every rank gets the whole output, and after DDP's
    average the gradient of a loss coupling rows across ranks is one process's (float64, to 1e-12)."""
    worker = Path(__file__).with_name("row_sharded_worker.py")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(worker), str(tmp_path)], check=True, timeout=300, capture_output=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["even"]["seen"] == [4, 4]  # its own 4 of the 8 rows, with and without gradients
        assert result["odd"]["seen"] == [5, 5]  # 5 rows do not split over 2 ranks: run whole on each
        for case in ("even", "odd"):
            assert result[case]["output"] < 1e-14
            assert result[case]["grad"] < 1e-12, (case, result[case])
        assert result["score_rows"] == [4] and result["scores_exact"]


SPLIT_WEIGHT_ATOL = 1e-6
"""Every algorithm's weights after one rollout batch (2 steps at lr 1e-3) at 2 ranks: the halves' gradients summed in
another order (measured below 2e-7), except the attention's key bias, whose gradient is exactly zero (softmax
ignores a shift): Adam turns its float noise (~1e-9) into whole steps, so it is left out."""


def test_every_discrete_rl_algorithm_splits_its_rows_over_two_ranks(tmp_path: Path) -> None:
    """One rollout batch of each masked-diffusion RL algorithm (DiscreteRun under DDP, two real ranks) against one
    process: each rank's policy and reference network computed half the rows (sampling, scoring, the loss)
    and its verifier scored half the rollouts, while the losses, rollout log and weights are one process's.
    TR2-D2's searches expand a one-row root per iteration, which does not split: those rows run on both ranks."""
    from discrete_rl_worker import ALGORITHMS, run_algorithm

    worker = Path(__file__).with_name("discrete_rl_worker.py")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(worker), str(tmp_path)], check=True, timeout=300, capture_output=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for algorithm in ALGORITHMS:
        one = run_algorithm(algorithm)
        assert one["rows"]["policy"] > 0 and one["scored"] == 8
        unsplit = {"policy": 2, "reference": 2} if algorithm == "tr2d2" else {"policy": 0, "reference": 0}
        for result in ranks:
            two = result[algorithm]
            for net in ("policy", "reference"):  # tr2d2: 2 searches x 2 iterations x 1 root row, on each rank
                assert two["rows"][net] == one["rows"][net] // 2 + unsplit[net], (algorithm, net, two, one["rows"])
            assert two["scored"] == 4, algorithm
            torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5,
                                       atol=1e-7)
            for column in ("samples", "reward", "accuracy", "zero_std_ratio"):
                torch.testing.assert_close(torch.tensor(two["log"][column], dtype=torch.float64),
                                           torch.tensor(one["log"][column], dtype=torch.float64), equal_nan=True)
        weights = load_file(tmp_path / f"rank0-{algorithm}.safetensors")
        d = weights["token_embedding.weight"].shape[1]
        for name, w in one["weights"].items():
            w2 = weights[name]
            if name.endswith("self_attn.in_proj_bias"):
                w, w2 = torch.cat([w[:d], w[2 * d:]]), torch.cat([w2[:d], w2[2 * d:]])  # query, value parts
            torch.testing.assert_close(w2, w, rtol=0, atol=SPLIT_WEIGHT_ATOL, msg=lambda m, n=name: f"{n}: {m}")


def rollout_log(log: dict[str, list[float | None]]) -> torch.Tensor:
    """The reward log's columns that depend only on the rollouts (rows: steps; NaN where a step drew none)."""
    columns = ["samples", "reward", "accuracy", "zero_std_ratio", "sampling_forwards", "scoring_forwards"]
    return torch.tensor([[math.nan if v is None else v for v in log[c]] for c in columns]).T


@pytest.fixture(scope="module")
def sudoku(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Sudoku data and a pretrained masked-diffusion LM; `one` holds the one-process discrete rl run."""
    b = Built(tmp_path_factory.mktemp("distributed-sudoku") / "artifacts", sudoku_spec_dict)
    pretrained = b.run("pretrain", "sudoku-pretrain")
    b.one = b.run("rl", "sudoku-rl-one")
    assert min(v for v in b.one["log"]["zero_std_ratio"] if v is not None) < 1  # some groups carry advantages
    moved = max(float((b.one["weights"][k] - pretrained["weights"][k]).abs().max()) for k in b.one["weights"])
    assert moved > 20 * RL_WEIGHT_ATOL, moved  # the tolerance is far below how far RL moved the weights
    return b


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_discrete_rl_at_two_ranks_matches_one_process(sudoku: Built, strategy: str) -> None:
    """Masked-diffusion RL: rollouts sampled, scored and differentiated on each rank's rows, advantages and
    the token-mean loss over whole groups; the same rollouts, rewards and weights as one process (FSDP2:
    policy and reference model sharded)."""
    one = sudoku.one
    two = sudoku.run("rl", f"sudoku-rl-{strategy}", nproc_per_node=2, strategy=strategy)
    assert two["metrics"]["processes"] == 2 and one["metrics"]["processes"] == 1
    torch.testing.assert_close(rollout_log(two["log"]), rollout_log(one["log"]), rtol=1e-5, atol=0, equal_nan=True)
    torch.testing.assert_close(torch.tensor(two["log"]["kl"], dtype=torch.float64),
                               torch.tensor(one["log"]["kl"], dtype=torch.float64), rtol=1e-4, atol=1e-7)
    assert_weights_close(two["weights"], one["weights"], atol=RL_WEIGHT_ATOL)
    assert two["files"] == one["files"]


@pytest.mark.slow
def test_continuous_rl_with_anchors_under_fsdp(built: Built) -> None:
    """AWM keeps an EMA copy of the policy (lerped from its whole weights every step) and a reference model
    (FSDP2-sharded): 2 FSDP ranks give one process's rewards and weights."""
    awm = {**copy.deepcopy(RL), "name": "awm", "algorithm": {"algorithm": "awm", "sampler_steps": 4,
                                                             "timesteps_per_sample": 2}}
    one = built.run("awm", "awm-one", extra=[awm])
    two = built.run("awm", "awm-fsdp", extra=[awm], nproc_per_node=2, strategy="fsdp")
    torch.testing.assert_close(torch.tensor([r for r in two["rewards"] if r is not None]),
                               torch.tensor([r for r in one["rewards"] if r is not None]), rtol=1e-4, atol=1e-5)
    assert_weights_close(two["weights"], one["weights"])


def test_bad_distributed_settings_name_the_field(built: Built) -> None:
    many = validate_spec(spec_dict(built.root, nproc_per_node=4096))
    with pytest.raises(InputError, match=r"runtime\.distributed\.nproc_per_node: more processes than usable CPU"):
        launch(StageContext(many, "pretrain", "k", {}, built.store, built.root), "pretrain")
    nccl = validate_spec(spec_dict(built.root, nproc_per_node=2, backend="nccl"))
    with pytest.raises(InputError, match=r"runtime\.distributed\.backend: nccl runs collectives on CUDA"):
        launch(StageContext(nccl, "pretrain", "k", {}, built.store, built.root), "pretrain")
    marble = spec_dict(built.root, nproc_per_node=2, strategy="fsdp")
    marble["stages"][1].update(combine="marble", rewards=[{"name": "classifier_logprob"}, {"name": "ink"}])
    with pytest.raises(InputError, match=r"runtime\.distributed\.strategy: stage 'rl' combines rewards with MARBLE"):
        launch(StageContext(validate_spec(marble), "rl", "k", {}, built.store, built.root), "rl")
    uneven = spec_dict(built.root, nproc_per_node=2)
    uneven["stages"][0]["batch_size"] = 33
    with pytest.raises(InputError, match=r"stages\[0\]\.batch_size: the global batch must split evenly"):
        launch(StageContext(validate_spec(uneven), "pretrain", "k", {}, built.store, built.root), "pretrain")
    with pytest.raises(Exception, match="node_rank must be below nnodes"):
        validate_spec(spec_dict(built.root, nnodes=2, node_rank=2, rdzv_endpoint="127.0.0.1:1"))


def test_unreachable_rendezvous_is_bounded_and_publishes_nothing(built: Built, tmp_path: Path) -> None:
    """Node 1 of 2 with no node 0: the rendezvous gives up after rdzv_timeout_s with a message naming it."""
    spec = validate_spec(spec_dict(built.root, nnodes=2, node_rank=0, rdzv_endpoint=f"127.0.0.1:{free_port()}",
                                   rdzv_timeout_s=3))
    node = next(n for n in nodes(spec) if n.name == "pretrain")
    inputs = {"data": built.refs["data"]}
    workdir = tmp_path / "staging"
    workdir.mkdir()
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"runtime\.distributed\.rdzv_endpoint: the rendezvous could not be completed"):
        launch(StageContext(spec, node.name, "unreached", inputs, built.store, workdir, progress=False), "pretrain")
    assert time.monotonic() - t0 < 60
    assert list(workdir.iterdir()) == [] and not built.store.run_dir("unreached").steps()


def test_fsdp_refuses_mixed_dtypes_before_sharding() -> None:
    """A model FSDP2 cannot shard is refused with a reason (the worker reports it against the strategy field)."""
    import torch.distributed as dist
    from torch import nn

    from diffpipe.tasks.distributed import FsdpRefused, shard

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
        with pytest.raises(FsdpRefused, match="one dtype; Sequential has torch.float32, torch.float64"):
            shard(mixed)
        plain = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        shard(plain)
        assert type(plain).__name__.startswith("FSDP")
    finally:
        dist.destroy_process_group()


def test_cli_nproc_per_node_beyond_the_cores_exits_2_before_running(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from diffpipe.flows.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp_path / "artifacts")))
    assert main(["run", str(path), "--nproc-per-node", "4096"]) == 2
    err = capsys.readouterr().err
    assert "runtime.distributed.nproc_per_node: more processes than usable CPU cores on this machine" in err
    assert "found 4096" in err and not (tmp_path / "artifacts" / "objects").exists()


@pytest.mark.slow
def test_stop_request_reaches_every_rank_which_checkpoint_together(built: Built) -> None:
    """SIGTERM / SIGINT of a run (here: its stop request) stops the ranks at one step with a checkpoint."""
    from diffpipe.errors import Interrupted
    from diffpipe.tasks.stopping import STOP, request_stop

    if not hasattr(built, "two"):
        built.two = built.run("pretrain", "two-ddp-again", nproc_per_node=2)
    failure: list[BaseException] = []

    def stopped_run() -> None:
        try:
            built.run("pretrain", "stopped", nproc_per_node=2)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            failure.append(e)

    thread = threading.Thread(target=stopped_run)
    thread.start()
    run = built.store.run_dir("stopped")
    deadline = time.monotonic() + 120
    try:
        while not run.steps():
            assert thread.is_alive() and time.monotonic() < deadline, f"no checkpoint appeared: {failure}"
            time.sleep(0.02)
        request_stop()
        thread.join(timeout=120)
    finally:
        STOP.clear()
    assert len(failure) == 1 and isinstance(failure[0], Interrupted), failure
    assert "stopped at step" in str(failure[0]) and "checkpoint saved" in str(failure[0])
    stopped_at = max(run.steps())
    assert rank_process(0) is None and rank_process(1) is None
    logs: list[str] = []
    resumed = built.run("pretrain", "stopped", logs=logs, nproc_per_node=2)
    assert f"pretrain: resumed from the checkpoint at step {stopped_at}" in logs
    assert_weights_close(resumed["weights"], built.two["weights"], atol=0)


SAMPLER_MLP = {"arch": "time_mlp", "hidden": 16, "layers": 1}
SAMPLERS = {
    "pdns": ({"kind": "gmm", "num_modes": 4, "loc_scale": 4.0}, SAMPLER_MLP,
             {"sde_steps": 8, "samples_per_step": 16, "sigma": 4.0}),
    "naas": ({"kind": "many_well", "dim": 2, "wells": 1}, SAMPLER_MLP, {"sde_steps": 8, "samples_per_step": 16}),
    "mdns": ({"kind": "ising", "size": 3, "beta": 0.4}, {"arch": "mdlm", "d_model": 16, "num_layers": 1,
                                                         "num_heads": 2}, {"replicates": 2}),
    "pis": ({"kind": "many_well", "dim": 2, "wells": 1}, SAMPLER_MLP, {"sde_steps": 8}),
}
"""Tiny sampler stages (8 steps, buffers refilled every 3): PDNS, NAAS and MDNS train on buffers of rollouts,
PIS differentiates through the rollout and the energy (the gathers' adjoints carry the gradient across ranks)."""
SAMPLER_WEIGHT_ATOL = 1e-5
"""8 steps at lr 1e-3: the halves' gradients summed in another order (float32 rounding, below 1e-6 measured)."""


def without_key_bias(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights with the attention's key bias cut out of its input-projection bias (query and value parts kept):
    its gradient is exactly zero (softmax ignores a shift), so Adam turns float noise into whole steps."""
    out = dict(weights)
    for name, w in weights.items():
        if name.endswith("self_attn.in_proj_bias"):
            d = len(w) // 3
            out[name] = torch.cat([w[:d], w[2 * d:]])
    return out


def sampler_spec(root: Path, method: str, **distributed) -> dict:
    """Energy data -> a tiny neural_sampler stage of `method`, with `runtime.distributed` set."""
    target, model, options = SAMPLERS[method]
    return {"name": "s", "data": {"kind": "energy", "target": target, "num_reference": 20}, "model": model,
            "stages": [{"name": "sampler", "stage": "neural_sampler", "method": method, "steps": 8, "lr": 1e-3,
                        "batch_size": 16, "num_samples": 32, "checkpoint_every": 4, "resample_every": 3,
                        **options}],
            "runtime": {"device": "cpu", "distributed": distributed}, "storage": {"root": str(root)}}


def run_sampler(root: Path, method: str, key: str, **distributed) -> dict:
    """The sampler stage (its data built first) in one process or across processes: losses, weights, samples."""
    spec = validate_spec(sampler_spec(root, method, **distributed))
    store = ArtifactStore(spec.storage.root)
    with tempfile.TemporaryDirectory() as data, tempfile.TemporaryDirectory() as tmp:
        get_domain("energy").build(StageContext(spec, "data", "d" * 64, {}, store, Path(data), progress=False))
        ref = store.publish(Path(data), "dataset", {})
        ctx = StageContext(spec, "sampler", key, {"data": ref}, store, Path(tmp), progress=False)
        out = stage_function("neural_sampler", spec.runtime)(ctx)
        samples = xr.open_zarr(Path(tmp, "samples.zarr"), consolidated=False).load()
        return {"metrics": out.metrics, "losses": read_json(Path(tmp, "losses.json"))["losses"],
                "weights": load_file(Path(tmp, "model", "diffusion_pytorch_model.safetensors")),
                "x": torch.from_numpy(samples["x"].values), "log_w": torch.from_numpy(samples["log_w"].values),
                "energy_evals": samples.attrs["energy_evals"]}


@pytest.mark.parametrize("method", ["mdns", "naas", pytest.param("pdns", marks=pytest.mark.slow),
                                    pytest.param("pis", marks=pytest.mark.slow)])
def test_neural_sampler_at_two_ranks_matches_one_process(tmp_path: Path, method: str) -> None:
    """The neural_sampler stage through the launcher (DDP, two real ranks): every rank runs the network and the
    energy on half the rows of each call (gathered), so buffers, losses, trained weights, published samples
    and the energy count are one process's (weights to float rounding of the halves' gradient sums)."""
    one = run_sampler(tmp_path / "artifacts", method, "one")
    two = run_sampler(tmp_path / "artifacts", method, "two", nproc_per_node=2)
    assert two["metrics"]["processes"] == 2 and one["metrics"]["processes"] == 1
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=LOSS_RTOL, atol=1e-7)
    assert_weights_close(*(without_key_bias(w) for w in (two["weights"], one["weights"])), atol=SAMPLER_WEIGHT_ATOL)
    torch.testing.assert_close(two["x"], one["x"], rtol=0, atol=1e-4)
    torch.testing.assert_close(two["log_w"], one["log_w"], rtol=1e-4, atol=1e-4)
    assert two["energy_evals"] == one["energy_evals"] > 0


def test_a_rank_killed_by_a_signal_is_reported_before_the_peers_it_broke() -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from diffpipe.tasks.launch import root_failure

    peer = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file="/nonexistent")  # gloo: connection closed
    killed = ProcessFailure(local_rank=1, pid=2, exitcode=-9, error_file="/nonexistent")
    peer.timestamp, killed.timestamp = 100, 101  # on a busy machine the peer's failure can be recorded first
    assert root_failure(ChildFailedError("rank_worker", {0: peer, 1: killed}))[0] == 1
    killed.exitcode = 1  # no signal: the first to fail
    assert root_failure(ChildFailedError("rank_worker", {0: peer, 1: killed}))[0] == 0

"""Self-training generations: the collapse measures on hand-computed cases, bad input, a tiny real run."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from tiny_specs import run_spec as _run

from diffpipe.flows.cli import main
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import open_dataset, read_json
from diffpipe.tasks.data.rna import RNADesignDomain
from diffpipe.tasks.metrics.collapse import farthest_point_selection, kl_entropy, memorisation, nearest_distance
from diffpipe.tasks.self_train_data import TokenSelfTrain

REPO = Path(__file__).resolve().parents[1]

SELF_TRAIN = {"name": "st", "stage": "self_train", "generations": 1, "selection": "entropy", "real_fraction": 0.25,
              "data_size": 48, "pool_factor": 2, "steps": 8, "batch_size": 16, "checkpoint_every": 4,
              "log_every": 4, "warmup_steps": 2, "scheduler": {"name": "FlowMatchEulerDiscreteScheduler", "steps": 3},
              "eval_samples": 24}


def test_kl_entropy_matches_the_formula_by_hand() -> None:
    # points 0, 1, 3 on a line: nearest distances 1, 1, 2; unit 1-ball length 2; psi(3) - psi(1) = 1 + 1/2
    x = torch.tensor([[0.0], [1.0], [3.0]])
    assert kl_entropy(x) == pytest.approx(1.5 + math.log(2) + math.log(2) / 3, rel=1e-12)
    # second neighbours 3, 2, 3; psi(3) - psi(2) = 1/2
    assert kl_entropy(x, k=2) == pytest.approx(0.5 + math.log(2) + (2 * math.log(3) + math.log(2)) / 3, rel=1e-12)
    # scaling every point by s adds d log s
    assert kl_entropy(5 * x) == pytest.approx(kl_entropy(x) + math.log(5), rel=1e-12)


def test_farthest_point_selection_is_greedy_and_never_repeats() -> None:
    x = torch.tensor([[0.0], [0.0], [1.0], [10.0], [11.0], [5.0], [0.0]])
    gen = torch.Generator().manual_seed(3)
    chosen = farthest_point_selection(x, 7, gen).tolist()
    assert sorted(chosen) == list(range(7))
    for i in range(1, 4):  # before only duplicates remain, every pick is the farthest from those kept
        gaps = nearest_distance(x, x[chosen[:i]])
        assert gaps[chosen[i]] == gaps.max()


def test_memorisation_of_copies_and_of_fresh_draws() -> None:
    gen = torch.Generator().manual_seed(0)
    train, heldout = torch.randn(200, 4, generator=gen), torch.randn(200, 4, generator=gen)
    copies = memorisation(train[:50], train, heldout, torch.Generator().manual_seed(1))
    assert copies["nn_distance_train"] == 0.0 and copies["memorisation_ratio"] == 0.0
    assert copies["copy_fraction"] == 1.0
    fresh = memorisation(torch.randn(300, 4, generator=gen), train, heldout, torch.Generator().manual_seed(1))
    assert 0.8 < fresh["memorisation_ratio"] < 1.25 and fresh["copy_fraction"] < 0.2


def _spec(tiny_spec: dict, **changes) -> dict:
    spec = copy.deepcopy(tiny_spec)
    spec["stages"] = [spec["stages"][0], {**SELF_TRAIN, **changes}]
    return spec


@pytest.mark.parametrize(("change", "field"), [({"generations": 0}, "stages[1].generations"),
                                                ({"real_fraction": 1.5}, "stages[1].real_fraction"),
                                                ({"real_fraction": -0.1}, "stages[1].real_fraction")])
def test_bad_options_exit_2_naming_the_field(tiny_spec: dict, tmp_path: Path, capsys, change: dict,
                                             field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_spec(tiny_spec, **change)))
    assert main(["validate", str(path)]) == 2
    assert f"error: {field}:" in capsys.readouterr().err


def test_selection_on_data_without_entropy_exits_2(tmp_path: Path, capsys) -> None:
    spec = yaml.safe_load((REPO / "pipelines" / "cei.yaml").read_text())
    pretrain = {"name": "pretrain", "stage": "pretrain", "objective": {"kind": "flow_matching"}}
    spec["stages"] = [pretrain, {**pretrain, "name": "st", "stage": "self_train", "selection": "random"}]
    spec["storage"] = {"root": str(tmp_path / "artifacts")}
    path = tmp_path / "cei.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 2
    assert "error: stages[1].selection: self_train selects and measures by the entropy" in capsys.readouterr().err


def test_token_features_measure_hamming_distance() -> None:
    data = TokenSelfTrain(RNADesignDomain(), 1)
    x = torch.tensor([[3, 4, 5, 6], [3, 4, 6, 6], [6, 5, 4, 3]])
    torch.testing.assert_close(torch.cdist(data.features(x), data.features(x)) ** 2,
                               torch.tensor([[0.0, 1, 4], [1, 0, 4], [4, 4, 0]]), atol=1e-5, rtol=0)


def test_rna_designs_self_train_end_to_end(tmp_path: Path, prefect_api) -> None:
    """Token data: generation 1 trains on generation 0's designs for training structures, measured on held-out."""
    spec = yaml.safe_load((REPO / "pipelines" / "rna_self_train.yaml").read_text())
    spec["data"].update(num_train=64, num_test=8, length=14, min_pairs=2)
    spec["model"] = {"arch": "mdlm", "d_model": 16, "num_layers": 1, "num_heads": 2}
    tiny = {"steps": 6, "batch_size": 16, "checkpoint_every": 6, "log_every": 6, "warmup_steps": 2}
    spec["stages"][0].update(tiny)
    spec["stages"][1].update(tiny, generations=1, selection="entropy", real_fraction=0.25, data_size=16,
                             eval_samples=12, scheduler={"name": "BlockRefinementScheduler", "steps": 6,
                                                         "options": {"block_length": 7}})
    spec["storage"] = {"root": str(tmp_path / "artifacts")}
    spec["runtime"] = {"device": "cpu", "seed": 0}
    states = _run(spec)
    metrics = states["self_train.gen1"]["metrics"]
    assert metrics["training_set"] == {"size": 16, "real": 4, "synthetic": 12, "pool": 24}
    assert set(metrics["quality"]) == {"accuracy", "reward", "unique_sequences"}
    assert metrics["memorisation"]["memorisation_ratio"] >= 0.0 and math.isfinite(metrics["sample_entropy"])
    assert "quality" in metrics["generation_0"]
    store = ArtifactStore(spec["storage"]["root"])
    kept = open_dataset(store.local_path(store.lookup(states["self_train.gen1"]["cache_key"])) / "train.zarr").load()
    real = open_dataset(store.local_path(store.lookup(states["data"]["cache_key"])) / "train.zarr").load()
    assert kept.sizes["problem"] == 16 and int(kept["synthetic"].sum()) == 12
    # the real share is real training pairs; every synthetic prompt is a training structure
    real_pairs = {(tuple(p), tuple(c)) for p, c in zip(real["prompt"].values.tolist(),
                                                       real["completion"].values.tolist(), strict=True)}
    flags = kept["synthetic"].values
    pairs = list(zip(kept["prompt"].values.tolist(), kept["completion"].values.tolist(), strict=True))
    assert all((tuple(p), tuple(c)) in real_pairs for (p, c), f in zip(pairs, flags, strict=True) if not f)
    assert {tuple(p) for (p, _), f in zip(pairs, flags, strict=True) if f} <= {p for p, _ in real_pairs}


def test_generations_are_cached_nodes_and_a_longer_run_reuses_them(tiny_spec: dict, prefect_api) -> None:
    one = _run(_spec(tiny_spec))
    assert one["st.gen1"]["state"] == "executed"
    metrics = one["st.gen1"]["metrics"]
    assert metrics["training_set"] == {"size": 48, "real": 12, "synthetic": 36, "pool": 72}
    assert set(metrics["memorisation"]) >= {"nn_distance_train", "nn_distance_heldout", "memorisation_ratio"}
    assert {"quality", "entropy", "sample_entropy", "generation_0"} <= set(metrics)
    assert "classifier_accuracy" in metrics["quality"]

    two = _run(_spec(tiny_spec, generations=2))
    assert {n: s["state"] for n, s in two.items()} == {"data": "cached", "pretrain": "cached",
                                                       "st.gen1": "cached", "st.gen2": "executed"}
    store = ArtifactStore(tiny_spec["storage"]["root"])
    folder = store.local_path(store.lookup(two["st.gen2"]["cache_key"]))
    kept = open_dataset(folder / "train.zarr").load()
    assert int(kept["synthetic"].sum()) == 36 and kept.sizes["sample"] == 48
    assert read_json(folder / "metrics.json")["generation"] == 2
    # generation 2's training images are generation 1's samples (the real share aside), not real digits
    real = open_dataset(store.local_path(store.lookup(two["data"]["cache_key"])) / "train.zarr").load()
    synthetic = torch.from_numpy(kept["x"].values[kept["synthetic"].values])
    assert nearest_distance(synthetic, torch.from_numpy(real["x"].values)).min() > 0

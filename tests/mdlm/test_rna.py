"""RNA design: the ViennaRNA oracle and base-pair F1 on hand-made cases, the splits, a tiny real RL run."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_specs import run_flow

from diffpipe.schemas.rna import RNADesignData
from diffpipe.storage import ArtifactStore
from diffpipe.storage.formats import open_dataset
from diffpipe.tasks.data.reasoning_domain import diversity
from diffpipe.tasks.data.rna import RNA_VOCAB, build_rna_design, design_scores, fold, pair_f1

REPO = Path(__file__).resolve().parents[2]


def test_pair_f1_by_hand() -> None:
    assert pair_f1("((....))", "((....))") == 1.0
    assert pair_f1("........", "........") == 1.0
    # pairs {(1,8), (2,7)} vs {(2,7)}: bp distance 1 over 3 pairs -> F1 = 2 * 1 / 3
    assert pair_f1("((....))", ".(....).") == pytest.approx(2 / 3)
    assert pair_f1("((....))", "........") == 0.0


def test_a_strong_hairpin_folds_and_scores_one() -> None:
    sequence, target = "GGGGAAAACCCC", "((((....))))"
    assert fold(sequence) == target
    prompts = RNA_VOCAB.encode(target, 12, 0)[None]
    rewards, correct = design_scores(prompts, RNA_VOCAB.encode(sequence, 12, 2)[None])
    assert rewards.tolist() == [1.0] and correct.tolist() == [True]
    short = RNA_VOCAB.encode("GGGGAAAACCC", 12, 2)[None]  # one nucleotide short: not a design
    assert design_scores(prompts, short)[0].tolist() == [0.0]


def test_splits_fold_into_their_prompts_and_share_no_structure() -> None:
    splits = build_rna_design(RNADesignData(num_train=60, num_test=12, length=14, min_pairs=2))
    for ds in splits.values():
        rewards, correct = design_scores(ds["prompt"].values, ds["completion"].values)
        assert correct.all() and (rewards == 1.0).all()
    structures = {split: {RNA_VOCAB.decode(p) for p in ds["prompt"].values} for split, ds in splits.items()}
    assert not structures["train"] & structures["test"]
    assert len(structures["test"]) == 12
    assert all(s.count("(") >= 2 for s in structures["train"])


def test_diversity_by_hand() -> None:
    draws = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 4],  # prompt 1: 2 distinct of 3; Hamming 0, 1, 1
                      [0, 0, 0], [1, 1, 1], [2, 2, 2]])  # prompt 2: all distinct; Hamming 3, 3, 3
    out = diversity(draws, 3)
    assert out["distinct_share"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["mean_pairwise_hamming"] == pytest.approx((2 / 3 + 3) / 2)


def tiny_rna_spec(root: Path, algorithm: dict | None = None) -> dict:
    """The shipped RNA design pipeline shrunk to seconds."""
    spec = yaml.safe_load((REPO / "pipelines" / "rna_design.yaml").read_text())
    spec["data"].update(num_train=64, num_test=8, length=14, min_pairs=2)
    spec["model"] = {"arch": "mdlm", "d_model": 16, "num_layers": 1, "num_heads": 2}
    tiny = {"pretrain": {"steps": 12, "batch_size": 32, "checkpoint_every": 6, "log_every": 6, "warmup_steps": 2},
            "rl": {"steps": 4, "groups_per_step": 2, "group_size": 4, "checkpoint_every": 2, "log_every": 2},
            "sample_pretrained": {"num_samples": 8}, "sample": {"num_samples": 8},
            "sample_pretrained_draws": {"num_samples": 3, "samples_per_condition": 4},
            "sample_draws": {"num_samples": 3, "samples_per_condition": 4}}
    for stage in spec["stages"]:
        stage.update(copy.deepcopy(tiny.get(stage["name"], {})))
        if stage["stage"] == "sample":
            stage["scheduler"] = {"name": "BlockRefinementScheduler", "steps": 14, "options": {"block_length": 14}}
    if algorithm is not None:
        next(s for s in spec["stages"] if s["name"] == "rl")["algorithm"] = algorithm
    spec["storage"] = {"root": str(root)}
    spec["runtime"] = {"device": "cpu", "seed": 0}
    return spec


def test_rna_design_pipeline_end_to_end(tmp_path: Path, prefect_api) -> None:
    tr2d2 = {"algorithm": "tr2d2", "num_iterations": 2, "mcts_iterations": 2, "num_children": 2, "num_replicates": 2}
    raw = tiny_rna_spec(tmp_path / "artifacts", tr2d2)
    summary = run_flow(raw)
    states = {s["name"]: s for s in summary}
    assert all(s["state"] == "executed" for s in states.values())
    rl = states["rl"]["metrics"]
    assert rl["rollout_batches"] == 2 and 0.0 <= rl["train_reward"]["last"] <= 1.0
    model = states["evaluate"]["metrics"]["model"]
    assert set(model) == {"accuracy", "reward", "unique_sequences"}
    assert states["evaluate_pretrained"]["metrics"]["data_floor"]["accuracy"] == 1.0
    assert np.isfinite(model["reward"])
    store = ArtifactStore(tmp_path / "artifacts")
    for name in ("pretrained_draws", "draws"):  # 4 draws at temperature 1 for each of 3 targets
        path = store.local_path(store.lookup(states[f"sample_{name}"]["cache_key"]))
        samples = open_dataset(path / "samples.zarr").load()
        prompts, completions = samples["prompt"].values, samples["completion"].values
        assert prompts.shape[0] == 12 and (prompts.reshape(3, 4, -1) == prompts[::4, None]).all()
        assert len({c.tobytes() for c in completions}) > 3  # sampled, not greedy: targets get differing draws
        metrics = states[f"evaluate_{name}"]["metrics"]
        assert metrics["samples_per_condition"] == 4 and metrics["model"] == {
            **{k: pytest.approx(v) for k, v in diversity(completions, 4).items()},
            "accuracy": pytest.approx(design_scores(prompts, completions)[1].mean()),
            "reward": pytest.approx(design_scores(prompts, completions)[0].mean()),
            "unique_sequences": pytest.approx(len({c.tobytes() for c in completions}) / 12)}

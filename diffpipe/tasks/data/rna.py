"""The RNA design domain: target structure in, sequence out, scored by ViennaRNA's minimum-free-energy fold.

Data. Sequences are drawn uniformly over ACGU and folded with ViennaRNA (`RNA.fold`, Turner 2004
energies at 37 C); each sequence whose MFE structure has at least `min_pairs` base pairs becomes a pair
(prompt: the structure in dot-bracket, completion: the sequence). The split is a hash of the structure,
so held-out targets are structures never seen in training, each known to be designable.

Reward. A completion is folded and compared with the target: the base-pair F1,
2 |P_fold & P_target| / (|P_fold| + |P_target|) (1 when both have no pairs), which is
1 - bp_distance / (|P_fold| + |P_target|); a completion that is not exactly `length` nucleotides scores 0.
It is correct when its MFE structure is the target.
"""

from __future__ import annotations

import hashlib

import numpy as np
import RNA
import torch
import xarray as xr

from diffpipe.errors import DataError
from diffpipe.schemas.rna import RNADesignData

from ..context import StageContext
from ..registry import domain
from ..rl.rewards import reward
from .reasoning import EOS, PAD, CharVocab
from .reasoning_domain import ReasoningDomain

BASES = "ACGU"
RNA_VOCAB = CharVocab(("<pad>", "<mask>", "<eos>", *BASES, "(", ")", "."))
"""Nucleotides and dot-bracket characters, after the shared pad, mask and end ids."""
TASK = "rna_design"
MAX_DRAWS_PER_PAIR = 50
"""Give up (DataError) when the splits do not fill after this many draws per requested pair."""


def fold(sequence: str) -> str:
    """ViennaRNA's minimum-free-energy structure of `sequence`, in dot-bracket."""
    structure, _ = RNA.fold(sequence)
    return structure


def pair_f1(structure: str, target: str) -> float:
    """Base-pair F1 of two dot-bracket structures of one length (1.0 when neither has a pair)."""
    pairs = structure.count("(") + target.count("(")
    return 1.0 if pairs == 0 else 1.0 - RNA.bp_distance(structure, target) / pairs


def design_scores(prompts: np.ndarray, completions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Base-pair F1 of each completion's fold against its prompt's target, and whether the folds match."""
    rewards, correct = [], []
    for prompt_ids, completion_ids in zip(np.asarray(prompts), np.asarray(completions), strict=True):
        target, sequence = RNA_VOCAB.decode(prompt_ids), RNA_VOCAB.decode(completion_ids)
        if len(sequence) != len(target) or any(ch not in BASES for ch in sequence):
            rewards.append(0.0)
            correct.append(False)
            continue
        structure = fold(sequence)
        rewards.append(pair_f1(structure, target))
        correct.append(structure == target)
    return np.array(rewards, dtype=np.float64), np.array(correct, dtype=bool)


def _split_of(structure: str, test_fraction: float) -> str:
    h = int(hashlib.sha256(structure.encode()).hexdigest()[:8], 16) / 16**8
    return "test" if h < test_fraction else "train"


def build_rna_design(spec: RNADesignData) -> dict[str, xr.Dataset]:
    """Train pairs (distinct sequences) and test pairs (distinct structures), drawn and folded."""
    rng = np.random.default_rng(spec.seed)
    train: dict[str, str] = {}
    test: dict[str, str] = {}
    for _ in range(MAX_DRAWS_PER_PAIR * (spec.num_train + spec.num_test)):
        if len(train) >= spec.num_train and len(test) >= spec.num_test:
            break
        sequence = "".join(rng.choice(list(BASES), spec.length))
        structure = fold(sequence)
        if structure.count("(") < spec.min_pairs:
            continue
        if _split_of(structure, spec.test_fraction) == "test":
            if len(test) < spec.num_test and structure not in test.values():
                test[sequence] = structure
        elif len(train) < spec.num_train:
            train[sequence] = structure
    else:
        raise DataError("data", "could not draw enough distinct RNA targets", f"{spec.num_train} train and "
                        f"{spec.num_test} test pairs", f"{len(train)} and {len(test)}")
    return {"train": _dataset(train, "train", spec.length), "test": _dataset(test, "test", spec.length)}


def _dataset(pairs: dict[str, str], split: str, length: int) -> xr.Dataset:
    sequences, structures = list(pairs), list(pairs.values())
    return xr.Dataset(
        {"prompt": (("problem", "prompt_pos"), np.stack([RNA_VOCAB.encode(s, length, PAD) for s in structures])),
         "completion": (("problem", "completion_pos"),
                        np.stack([RNA_VOCAB.encode(s, length, EOS) for s in sequences])),
         "mfe": ("problem", np.array([RNA.fold(s)[1] for s in sequences], dtype=np.float64))},
        attrs={"task": TASK, "split": split, "vocab": list(RNA_VOCAB.tokens),
               "folding": f"ViennaRNA {RNA.__version__}"},
    )


@domain(TASK)
class RNADesignDomain(ReasoningDomain):
    """RNA inverse folding with ViennaRNA as the exact structure oracle."""

    task = TASK
    vocab = RNA_VOCAB

    def splits(self, ctx: StageContext) -> dict[str, xr.Dataset]:
        """Train and test splits from the data spec."""
        return build_rna_design(ctx.pipeline.data)

    def check_split(self, ds: xr.Dataset, where: str) -> None:
        """Raise DataError unless `ds` holds RNA design prompt and completion token arrays."""
        for name in ("prompt", "completion"):
            if name not in ds:
                raise DataError(where, f"variable '{name}' is missing", "prompt and completion token arrays",
                                str(sorted(ds.data_vars)))
            values = np.asarray(ds[name])
            if values.ndim != 2 or values.min() < 0 or values.max() >= RNA_VOCAB.size:
                raise DataError(f"{where}:{name}", "token ids out of range", f"2-D ids in [0, {RNA_VOCAB.size})",
                                f"shape {values.shape}")
        if ds.attrs.get("task") != TASK:
            raise DataError(where, "attribute 'task' is not rna_design", TASK, repr(ds.attrs.get("task")))

    def score_completions(self, prompts: np.ndarray, completions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Base-pair F1 of the folds against the targets, and exact fold matches."""
        return design_scores(prompts, completions)

    def score(self, prompts: np.ndarray, completions: np.ndarray) -> dict[str, float]:
        """Accuracy (fold matches the target), mean base-pair F1, and the share of distinct sequences."""
        out = super().score(prompts, completions)
        out["unique_sequences"] = len({tuple(c) for c in np.asarray(completions).tolist()}) / max(1, len(completions))
        return out


@reward("rna_fold", kinds=(TASK,))
def rna_fold_reward(samples: torch.Tensor, conditions: torch.Tensor, data_path) -> torch.Tensor:
    """Base-pair F1 of each designed sequence's ViennaRNA MFE fold against its target structure."""
    rewards, _ = design_scores(conditions.cpu().numpy(), samples.cpu().numpy())
    return torch.from_numpy(rewards).float()

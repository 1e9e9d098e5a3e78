"""RNA inverse folding for masked-diffusion LMs: design a sequence that folds into a target structure.

The structure oracle is ViennaRNA's minimum-free-energy fold (Turner 2004 parameters, shipped with the
`viennarna` package): a real thermodynamic model, not a learned judge.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Strict


class RNADesignData(Strict):
    """Target dot-bracket structures (prompts) with sequences that fold into them (completions).

    Sequences are drawn uniformly over ACGU and folded; each becomes a training pair for its own MFE
    structure. Train and test never share a target structure (the split is a hash of the structure).
    """

    kind: Literal["rna_design"] = "rna_design"
    num_train: int = Field(default=2000, ge=1)
    """Training pairs (distinct sequences; a structure may have several)."""
    num_test: int = Field(default=200, ge=1)
    """Distinct held-out target structures."""
    length: int = Field(default=20, ge=8, le=64)
    """Nucleotides per sequence (and characters per structure)."""
    min_pairs: int = Field(default=3, ge=0)
    """Fewest base pairs of a target structure (sequences folding into fewer are redrawn)."""
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Share of structures (by hash) that belong to the test split."""
    seed: int = 0
    """Seed of the sequence generator."""

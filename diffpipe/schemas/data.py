"""Data sets a pipeline trains on: a union on `kind`."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .base import FieldError, Strict
from .cei import CoulombExplosionData
from .climate import ClimateData
from .reasoning import CountdownData, SudokuData
from .rna import RNADesignData
from .targets import EnergyData


class DigitsData(Strict):
    """scikit-learn's bundled 8x8 digit images (1797 images, 10 classes), scaled to [-1, 1]."""

    kind: Literal["digits"] = "digits"
    class_conditional: bool = True
    """Give the model the class label (and let samplers request classes)."""
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Share of images held out for evaluation (stratified by class)."""
    split_seed: int = 0
    """Seed of the train/test split."""

    images: ClassVar[int] = 1797
    labels: ClassVar[int] = 10

    @model_validator(mode="after")
    def _both_splits_hold_every_class(self) -> DigitsData:
        held_out = math.ceil(self.test_fraction * self.images)
        if min(held_out, self.images - held_out) < self.labels:
            low, high = self.labels / self.images, (self.images - self.labels) / self.images
            raise FieldError("test_fraction", f"a stratified split of {self.images} images needs at least "
                             f"{self.labels} (one per class) in each split; this holds out {held_out} of them",
                             f"a fraction between {low:.4f} and {high:.4f}", str(self.test_fraction))
        return self

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (channels, height, width)."""
        return (1, 8, 8)

    @property
    def num_classes(self) -> int | None:
        """Number of classes the model is conditioned on (None: unconditional)."""
        return 10 if self.class_conditional else None


DataSpec = Annotated[DigitsData | ClimateData | CoulombExplosionData | CountdownData | SudokuData | RNADesignData
                     | EnergyData,
                     Field(discriminator="kind")]

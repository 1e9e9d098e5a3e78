"""Digits domain: scikit-learn's bundled 8x8 images, a frozen torch classifier, and its metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy import linalg
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from diffpipe.schemas import DigitsData
from diffpipe.storage.formats import load_tensors, save_tensors, write_dataset, write_json

from ..context import StageContext, StageOutput
from ..domain import ImageDomain
from ..registry import domain
from ..seeding import seeded
from .images import save_grid

CLASSIFIER_FILE = "classifier.safetensors"
CLASSIFIER_EPOCHS = 400
"""Full-batch epochs of the frozen classifier the data build trains."""


class DigitsClassifier(nn.Module):
    """A small MLP on flattened 8x8 digits; its last hidden layer is the feature space of the FD."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden features of images in [-1, 1]."""
        return self.body(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.features(x))


def train_classifier(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = CLASSIFIER_EPOCHS,
                     advance: Callable[[int], None] | None = None) -> DigitsClassifier:
    """Train the classifier full-batch with Adam (deterministic for a seed); `advance(1)` after each epoch."""
    with seeded(seed):
        clf = DigitsClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        noisy = x + 0.05 * torch.randn(x.shape, generator=gen)  # light augmentation for robustness
        loss = nn.functional.cross_entropy(clf(noisy), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if advance is not None:
            advance(1)
    return clf.eval()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    eps = 1e-6 * np.eye(a.shape[1])  # dead ReLU units make the covariances singular
    s1, s2 = np.cov(a, rowvar=False) + eps, np.cov(b, rowvar=False) + eps
    covmean = linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _as_dataset(x: np.ndarray, y: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"x": (("sample", "channel", "y", "x"), x[:, None].astype(np.float32)),
         "label": (("sample",), y.astype(np.int64))},
        attrs={"source": "sklearn.datasets.load_digits", "scaling": "pixel / 8 - 1, range [-1, 1]"},
    )


@domain("digits")
class DigitsDomain(ImageDomain):
    """Builds the digits data artifact and scores digit samples with a frozen classifier."""

    def build(self, ctx: StageContext) -> StageOutput:
        """Split, store as zarr, train the frozen classifier once."""
        spec: DigitsData = ctx.pipeline.data
        raw = load_digits()
        x = (raw.images / 8.0 - 1.0).astype(np.float32)
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, raw.target, test_size=spec.test_fraction, random_state=spec.split_seed, stratify=raw.target
        )
        write_dataset(_as_dataset(x_tr, y_tr), ctx.workdir / "train.zarr")
        write_dataset(_as_dataset(x_te, y_te), ctx.workdir / "test.zarr")
        with ctx.progress_bar("classifier epochs", CLASSIFIER_EPOCHS) as advance:
            clf = train_classifier(torch.from_numpy(x_tr[:, None]), torch.from_numpy(y_tr), seed=spec.split_seed,
                                   epochs=CLASSIFIER_EPOCHS, advance=advance)
        save_tensors(clf.state_dict(), ctx.workdir / CLASSIFIER_FILE)
        with torch.no_grad():
            acc = float((clf(torch.from_numpy(x_te[:, None])).argmax(1) == torch.from_numpy(y_te)).float().mean())
        metrics = {"n_train": len(x_tr), "n_test": len(x_te), "classifier_test_accuracy": acc}
        write_json(ctx.workdir / "metrics.json", metrics)
        grid = save_grid(torch.from_numpy(x_tr[:50, None]), ctx.workdir / "examples.png",
                         torch.from_numpy(y_tr[:50]), title="training digits")
        summary = f"digits: {len(x_tr)} train / {len(x_te)} test images"
        return StageOutput("dataset", metrics, summary, {"examples": grid})

    def entropy_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the self_train stage's entropy and nearest-neighbour measures: the 64 pixels, flattened."""
        return x.flatten(1).float()

    def classifier(self, path: Path) -> DigitsClassifier:
        """The frozen classifier stored with the data."""
        clf = DigitsClassifier()
        clf.load_state_dict(load_tensors(path / CLASSIFIER_FILE))
        return clf.eval()

    @torch.no_grad()
    def domain_metrics(self, data_path: Path, x: torch.Tensor, labels: torch.Tensor | None,
                       reference: torch.Tensor) -> dict[str, Any]:
        """Classifier accuracy on requested classes (overall and per class), the mean `classifier_logprob`
        reward, and FD in classifier features."""
        from .digits_rewards import classifier_logprob

        clf = self.classifier(data_path)
        out: dict[str, Any] = {
            "frechet_distance": frechet_distance(clf.features(x).numpy(), clf.features(reference).numpy())
        }
        probs = clf(x).softmax(1)
        out["classifier_confidence"] = float(probs.max(1).values.mean())
        if labels is not None:
            hit = probs.argmax(1) == labels
            out["classifier_accuracy"] = float(hit.float().mean())
            out["classifier_logprob"] = float(classifier_logprob(x, labels, data_path).mean())  # the rl reward
            out["accuracy_per_class"] = {int(c): float(hit[labels == c].float().mean()) for c in labels.unique()}
        return out

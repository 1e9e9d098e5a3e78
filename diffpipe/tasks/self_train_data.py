"""What the `self_train` stage needs from a kind of data: real sets, model samples, quality, features.

Two kinds of data can train on their own samples:

- images (an ImageDomain with `entropy_features`, e.g. digits): a set is images with their class
  labels; samples come from the domain's own sampler with the requested labels cycled over the
  classes; quality is the domain's evaluation metrics (MMD and e.g. classifier accuracy / Frechet
  distance) against the held-out images;
- token sequences (the masked-diffusion tasks: Countdown, Sudoku, RNA design): a set is completions
  with their prompts; samples are completions drawn from the model at temperature 1 (its own
  distribution, not the greedy decoding of the sample stage) with the block sampler of `scheduler`,
  for training prompts drawn with replacement (candidate pools) or for the held-out prompts in order
  (evaluation); quality is the task's exact verifier on the held-out prompts (accuracy, reward).

Features (for entropy, nearest-neighbour distances and farthest-point selection): the flattened pixels
of an image; the one-hot encoding of a completion divided by sqrt 2, so that the squared distance of
two completions is their Hamming distance. Prompts, like image labels, are conditions and not part of
the features.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import xarray as xr

from diffpipe.errors import SpecError
from diffpipe.schemas import EvaluateStage, SampleStage
from diffpipe.schemas.self_train import SelfTrainStage
from diffpipe.storage.formats import open_dataset

from .context import StageContext
from .data.reasoning_domain import ReasoningDomain, token_tensors
from .domain import SAMPLES_FILE, ImageDomain
from .mdlm import block_schedule, sample_completions
from .sample import load_checkpoint
from .schedulers import make_scheduler

SAMPLE_BATCH = 256
"""Completions sampled per forward batch."""


@dataclass(frozen=True)
class SampleSet:
    """Examples and their conditions: images and labels, or completions and prompts."""

    x: torch.Tensor
    cond: torch.Tensor | None

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.x)

    def rows(self, index: torch.Tensor) -> SampleSet:
        """The examples at `index`."""
        return SampleSet(self.x[index], None if self.cond is None else self.cond[index])

    def concat(self, other: SampleSet) -> SampleSet:
        """This set followed by `other`."""
        cond = None if self.cond is None or other.cond is None else torch.cat([self.cond, other.cond])
        return SampleSet(torch.cat([self.x, other.x]), cond)


class SelfTrainData(Protocol):
    """One kind of data seen by the self_train stage."""

    def real(self, data_path: Path, split: str) -> SampleSet:
        """A split of the real data."""
        ...

    def draw(self, ctx: StageContext, spec: SelfTrainStage, checkpoint: Path, n: int, seed: int,
             split: str) -> SampleSet:
        """n samples of the checkpoint folder; token data conditions them on prompts of `split`."""
        ...

    def quality(self, data_path: Path, samples: SampleSet, heldout: SampleSet, seed: int) -> dict[str, float]:
        """Quality metrics of samples drawn for held-out evaluation."""
        ...

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of the entropy, distance and selection measures."""
        ...

    def dataset(self, samples: SampleSet, n_synthetic: int) -> xr.Dataset:
        """The training set as a dataset, with a `synthetic` flag on its first n_synthetic examples."""
        ...


class ImageSelfTrain:
    """Images with class labels, sampled by the domain's own sampler."""

    def __init__(self, domain: ImageDomain):
        self.domain = domain

    def real(self, data_path: Path, split: str) -> SampleSet:
        """Images and labels of a split."""
        return SampleSet(*self.domain.load(data_path, split))

    def draw(self, ctx: StageContext, spec: SelfTrainStage, checkpoint: Path, n: int, seed: int,
             split: str) -> SampleSet:
        """n samples (labels cycled over the classes) drawn as the sample stage does."""
        model, objective, info = load_checkpoint(checkpoint)
        scheduler = make_scheduler(objective, spec.scheduler.name, spec.scheduler.options)
        request = SampleStage(name="candidates", scheduler=spec.scheduler, num_samples=n, seed=seed,
                              guidance_scale=spec.guidance_scale)
        with tempfile.TemporaryDirectory(prefix="diffpipe-self-train-") as tmp:
            # as the stage itself (not the generation node), so the domain's sampler finds its spec fields
            inner = dataclasses.replace(ctx, workdir=Path(tmp), node=spec.name)
            self.domain.sample(inner, request, model.to(ctx.device), objective, scheduler, info)
            ds = open_dataset(Path(tmp) / SAMPLES_FILE).load()
        labels = torch.from_numpy(ds["label"].values) if "label" in ds else None
        return SampleSet(torch.from_numpy(ds["x"].values).float(), labels)

    def quality(self, data_path: Path, samples: SampleSet, heldout: SampleSet, seed: int) -> dict[str, float]:
        """The domain's MMD and domain metrics against the held-out images."""
        scores = self.domain.score(EvaluateStage(name="quality", metrics=["mmd", "domain"], seed=seed), data_path,
                                   samples.x, samples.cond, heldout.x)
        return {key: v for key, v in scores.items() if isinstance(v, float)}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The domain's entropy features."""
        return self.domain.entropy_features(x)

    def dataset(self, samples: SampleSet, n_synthetic: int) -> xr.Dataset:
        """Images (and labels) with the `synthetic` flag."""
        ds = xr.Dataset({"x": (("sample", "channel", "y", "x"), samples.x.numpy()),
                         "synthetic": ("sample", np.arange(len(samples)) < n_synthetic)})
        if samples.cond is not None:
            ds["label"] = ("sample", samples.cond.numpy().astype(np.int64))
        return ds


class TokenSelfTrain:
    """Completions with their prompts, sampled by the block sampler at temperature 1."""

    def __init__(self, domain: ReasoningDomain, index: int):
        self.domain, self.index = domain, index

    def real(self, data_path: Path, split: str) -> SampleSet:
        """Completions and prompts of a split."""
        prompts, completions = token_tensors(self.domain.load_split(data_path, split))
        return SampleSet(completions, prompts)

    def draw(self, ctx: StageContext, spec: SelfTrainStage, checkpoint: Path, n: int, seed: int,
             split: str) -> SampleSet:
        """Completions of n prompts: training prompts drawn with replacement, or the held-out prompts in turn."""
        gen = ctx.generator(offset=seed)
        prompts = self.real(ctx.input_path("data"), split).cond
        index = (torch.randint(len(prompts), (n,), generator=gen) if split == "train"
                 else torch.arange(n) % len(prompts))
        prompts = prompts[index]
        length = int(self.real(ctx.input_path("data"), "test").x.shape[1])
        steps, block_length = self.sampler(spec, length)
        model, _, _ = load_checkpoint(checkpoint)
        model = model.to(ctx.device).eval()
        chunks = [sample_completions(model, prompts[i:i + SAMPLE_BATCH].to(ctx.device), length,
                                     model.config.mask_token_id, steps=steps, block_length=block_length,
                                     temperature=1.0, generator=gen).cpu()
                  for i in range(0, n, SAMPLE_BATCH)]
        return SampleSet(torch.cat(chunks), prompts)

    def sampler(self, spec: SelfTrainStage, length: int) -> tuple[int, int | None]:
        """(steps, block length) of the block sampler from `scheduler`, checked against the completion length."""
        block = spec.scheduler.options.get("block_length")
        try:
            block_schedule(length, spec.scheduler.steps, block)
        except ValueError as e:
            raise SpecError(f"stages[{self.index}].scheduler.steps", str(e), "a multiple of the number of blocks",
                            str(spec.scheduler.steps)) from e
        return spec.scheduler.steps, block

    def quality(self, data_path: Path, samples: SampleSet, heldout: SampleSet, seed: int) -> dict[str, float]:
        """The task's exact verifier on the held-out prompts (accuracy, reward)."""
        return self.domain.score(samples.cond.numpy(), samples.x.numpy())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot completions / sqrt 2: squared distances are Hamming distances."""
        return torch.nn.functional.one_hot(x.long(), self.domain.vocab.size).flatten(1).float() / math.sqrt(2)

    def dataset(self, samples: SampleSet, n_synthetic: int) -> xr.Dataset:
        """Prompts and completions (the splits' layout) with the `synthetic` flag."""
        return xr.Dataset({"prompt": (("problem", "prompt_pos"), samples.cond.numpy()),
                           "completion": (("problem", "completion_pos"), samples.x.numpy()),
                           "synthetic": ("problem", np.arange(len(samples)) < n_synthetic)},
                          attrs={"task": self.domain.task})


def self_train_data(domain: Any, index: int) -> SelfTrainData | None:
    """The self_train view of a data kind's domain (None: it cannot estimate the entropy of sample sets)."""
    if isinstance(domain, ImageDomain) and hasattr(domain, "entropy_features"):
        return ImageSelfTrain(domain)
    if isinstance(domain, ReasoningDomain):
        return TokenSelfTrain(domain, index)
    return None

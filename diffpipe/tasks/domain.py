"""What a data kind provides to the generic stages, and the shared implementation for image data.

A domain builds its data artifact and tells the generic stages how to train, sample and evaluate on
it: how to build the network from `ModelSpec`, how to call it, where training batches come from, which
conditions to sample, and how to score samples. Stages stay generic; a new domain is one module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import xarray as xr
from diffusers import ModelMixin, SchedulerMixin

from diffpipe.errors import SpecError
from diffpipe.schemas import DiTSpec, EvaluateStage, ModelSpec, Objective, PipelineSpec, SampleStage, UNet2DSpec
from diffpipe.storage.formats import open_dataset, write_dataset

from .context import StageContext, StageOutput
from .metrics.generic import median_bandwidth, mmd2_unbiased, sliced_wasserstein
from .nets import IMAGE_ARCHS, build_image_model, call_image_model, null_label
from .nets.flowmap import network_fn
from .objectives import NetFn
from .sampling import CountingNet, guided, sample
from .search.run import make_search

SAMPLES_FILE = "samples.zarr"


class BatchSource(Protocol):
    """Training examples: `next(gen, n)` returns clean samples and their conditions."""

    def next(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, Any]:
        """A random batch of n examples (all randomness from `gen`)."""
        ...


class Domain(Protocol):
    """A data kind: its data artifact, its networks, its sampling and its metrics."""

    def build(self, ctx: StageContext) -> StageOutput:
        """Write the data set into `ctx.workdir`."""
        ...

    def build_model(self, model: ModelSpec, ctx: StageContext) -> ModelMixin:
        """A network with random weights for this data."""
        ...

    def net(self, model: ModelMixin) -> NetFn:
        """`net(x, timestep, cond)` for this domain's models."""
        ...

    def base_call(self, model: ModelMixin, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
        """Run a one-time network at diffusers timesteps (B,): what a FlowMapNet around it calls."""
        ...

    def batches(self, ctx: StageContext, device: torch.device) -> BatchSource:
        """The training split as a batch source."""
        ...

    def drop_condition(self, model: ModelMixin, cond: Any, drop: torch.Tensor) -> Any:
        """Conditions with the rows in `drop` replaced by 'no condition' (classifier-free guidance)."""
        ...

    def sample(self, ctx: StageContext, spec: SampleStage, model: ModelMixin, objective: Objective,
               scheduler: SchedulerMixin, info: dict[str, Any]) -> StageOutput:
        """Draw samples into `ctx.workdir`."""
        ...

    def evaluate(self, ctx: StageContext, spec: EvaluateStage) -> StageOutput:
        """Score the samples of `ctx.input_path('samples')` against held-out data."""
        ...


@dataclass
class TensorBatches:
    """Batches drawn with replacement from in-memory tensors."""

    x: torch.Tensor
    labels: torch.Tensor | None

    def next(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A random batch (indices drawn on the CPU generator)."""
        idx = torch.randint(0, self.x.shape[0], (n,), generator=gen).to(self.x.device)
        return self.x[idx], None if self.labels is None else self.labels[idx]


class ImageDomain:
    """Shared behaviour of labelled image data sets stored as `train.zarr` / `test.zarr` (x, label)."""

    def load(self, path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, H, W) and labels of one split."""
        ds = open_dataset(path / f"{split}.zarr").load()
        return torch.from_numpy(ds["x"].values), torch.from_numpy(ds["label"].values)

    def check_spec(self, spec: PipelineSpec) -> None:
        """The model against the images it will see: an image arch whose levels or patches fit the image side."""
        model, (_, height, width) = spec.model, spec.data.sample_shape
        if model.arch not in IMAGE_ARCHS:
            raise SpecError("model.arch", f"{spec.data.kind} data needs an image network", " or ".join(IMAGE_ARCHS),
                            repr(model.arch))
        if isinstance(model, UNet2DSpec):
            levels = len(model.block_out_channels)
            if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
                most = min(height & -height, width & -width).bit_length()
                raise SpecError("model.block_out_channels", f"{levels} levels halve the {height}x{width} images "
                                f"{levels - 1} times", f"at most {most} levels", str(list(model.block_out_channels)))
        if isinstance(model, DiTSpec) and (height % model.patch_size or width % model.patch_size):
            raise SpecError("model.patch_size", f"patches must tile the {height}x{width} images",
                            f"a divisor of {height} and {width}", str(model.patch_size))

    def build_model(self, model: ModelSpec, ctx: StageContext) -> ModelMixin:
        """A diffusers image model sized for the data (one extra null class when conditional)."""
        return build_image_model(model, ctx.pipeline.data.sample_shape, ctx.pipeline.data.num_classes)

    def net(self, model: ModelMixin) -> NetFn:
        """Call the diffusers image model (a FlowMapNet around one: with (1000 t, 1000 r) pairs)."""
        return network_fn(model, self.base_call)

    def base_call(self, model: ModelMixin, x: torch.Tensor, timestep: torch.Tensor,
                  labels: torch.Tensor | None) -> torch.Tensor:
        """The diffusers image model at per-sample timesteps with optional labels."""
        return call_image_model(model, x, timestep, labels)

    def batches(self, ctx: StageContext, device: torch.device) -> TensorBatches:
        """The training split in memory (small image sets)."""
        x, labels = self.load(ctx.input_path("data"), "train")
        return TensorBatches(x.to(device), labels.to(device) if ctx.pipeline.data.num_classes else None)

    def drop_condition(self, model: ModelMixin, cond: torch.Tensor | None, drop: torch.Tensor) -> torch.Tensor | None:
        """Replace dropped labels by the null class."""
        null = null_label(model)
        if cond is None or null is None:
            return cond
        return torch.where(drop.to(cond.device), torch.full_like(cond, null), cond)

    def requested_labels(self, spec: SampleStage, num_classes: int | None) -> torch.Tensor | None:
        """Label of every sample: `classes` cycled, or all classes in turn."""
        if num_classes is None:
            return None
        classes = spec.classes if spec.classes is not None else list(range(num_classes))
        if max(classes) >= num_classes or min(classes) < 0:
            raise ValueError(f"classes must lie in 0..{num_classes - 1}; found {classes}")
        return torch.tensor(classes).repeat(spec.num_samples // len(classes) + 1)[: spec.num_samples]

    def sample(self, ctx: StageContext, spec: SampleStage, model: ModelMixin, objective: Objective,
               scheduler: SchedulerMixin, info: dict[str, Any]) -> StageOutput:
        """Class-conditional (or not) samples with optional guidance, stored as zarr plus a PNG grid."""
        import time

        device = ctx.device
        labels = self.requested_labels(spec, info.get("num_classes"))
        net = CountingNet(guided(self.net(model), null_label(model), spec.guidance_scale))
        search = make_search(ctx, spec)
        gen, chunks, t0 = ctx.generator(offset=1000 + spec.seed), [], time.perf_counter()
        with ctx.progress_bar("samples", spec.num_samples) as advance:
            for start in range(0, spec.num_samples, spec.batch_size):
                n = min(spec.batch_size, spec.num_samples - start)
                lab = None if labels is None else labels[start:start + n].to(device)
                shape = (n, *ctx.pipeline.data.sample_shape)
                with ctx.autocast():
                    chunks.append(sample(net, objective, scheduler, spec.scheduler.steps, shape, lab, gen, device,
                                         search).cpu())
                advance(n)
        wall = time.perf_counter() - t0
        x = torch.cat(chunks).float()
        ds = xr.Dataset({"x": (("sample", "channel", "y", "x"), x.numpy())}, attrs={"stage": ctx.node})
        if labels is not None:
            ds["label"] = ("sample", labels.numpy().astype(np.int64))
        write_dataset(ds, ctx.workdir / SAMPLES_FILE)
        nfe = net.calls // max(1, len(chunks))
        name = type(scheduler).__name__ if scheduler is not None else "direct (regression)"
        metrics = {"num_samples": spec.num_samples, "scheduler": name, "steps": spec.scheduler.steps,
                   "nfe_per_sample": nfe, "sampling_wall_s": wall, "samples_per_s": spec.num_samples / wall,
                   **net.costs(spec.num_samples), **(search.metrics() if search else {})}
        nfe = metrics["nfe_per_sample"]
        grid = self.preview(x, labels, ctx.workdir / "grid.png", f"{ctx.node}: {name}, {nfe} NFE")
        summary = f"{spec.num_samples} samples with `{name}` in {spec.scheduler.steps} steps ({nfe} NFE)."
        return StageOutput("samples", metrics, summary, {"samples": grid})

    def evaluate(self, ctx: StageContext, spec: EvaluateStage) -> StageOutput:
        """MMD, sliced Wasserstein and domain metrics of the samples vs the test split, with data floors."""
        data_path = ctx.input_path("data")
        ds = open_dataset(ctx.input_path("samples") / SAMPLES_FILE).load()
        x = torch.from_numpy(ds["x"].values).float()
        labels = torch.from_numpy(ds["label"].values) if "label" in ds else None
        reference, _ = self.load(data_path, "test")
        gen = torch.Generator().manual_seed(spec.seed)
        if spec.max_reference and len(reference) > spec.max_reference:
            reference = reference[torch.randperm(len(reference), generator=gen)[: spec.max_reference]]
        train_x, train_y = self.load(data_path, "train")
        pick = torch.randperm(len(train_x), generator=gen)[: len(x)]
        with ctx.progress_bar("sample sets scored", 2) as advance:
            model = self.score(spec, data_path, x, labels, reference)
            advance(1)
            floor = self.score(spec, data_path, train_x[pick], None if labels is None else train_y[pick], reference)
            advance(1)
        metrics = {"model": model, "data_floor": floor, "num_samples": len(x), "num_reference": len(reference)}
        return StageOutput("metrics", metrics, metrics_table(metrics))

    def score(self, spec: EvaluateStage, data_path: Path, x: torch.Tensor, labels: torch.Tensor | None,
              reference: torch.Tensor) -> dict[str, Any]:
        """All requested metrics of sample set `x` against `reference`."""
        out: dict[str, Any] = {}
        if "mmd" in spec.metrics:
            h = spec.mmd_bandwidths or [f * median_bandwidth(reference) for f in (0.5, 1.0, 2.0)]
            out["mmd2"] = mmd2_unbiased(x, reference, h)
            out["mmd_kernel"] = "unbiased MMD^2, sum of RBF kernels exp(-d^2 / 2h^2), h = " + ", ".join(
                f"{v:.4g}" for v in h)
        if "sliced_wasserstein" in spec.metrics:
            gen = torch.Generator().manual_seed(spec.seed)
            out["sliced_wasserstein"] = sliced_wasserstein(x, reference, spec.sw_projections, gen)
        if "domain" in spec.metrics:
            out.update(self.domain_metrics(data_path, x, labels, reference))
        return out

    def domain_metrics(self, data_path: Path, x: torch.Tensor, labels: torch.Tensor | None,
                       reference: torch.Tensor) -> dict[str, Any]:
        """The data set's own metrics (none by default)."""
        return {}

    def preview(self, x: torch.Tensor, labels: torch.Tensor | None, path: Path, title: str) -> Path:
        """A PNG grid of samples."""
        from .data.images import save_grid

        return save_grid(x, path, labels, title=title)


def metrics_table(metrics: dict[str, Any]) -> str:
    """A markdown table of model vs data-floor scores."""
    model, floor = metrics["model"], metrics["data_floor"]
    rows = [f"| {k} | {v:.4g} | {floor.get(k, float('nan')):.4g} |" for k, v in model.items() if isinstance(v, float)]
    return "| metric | model | data floor |\n|---|---|---|\n" + "\n".join(rows)

"""The Coulomb explosion imaging domain: data artifact, atom transformer, batches, sampling, metrics.

Data. `build` simulates the events with Dask (`runtime.dask_address`, else a LocalCluster of
`runtime.dask_workers` processes) into `events.zarr` and writes `cei_domain.json` (the RMS coordinate
used to normalise geometries, and the detector and training options, so that changing those makes a
new data artifact and retrains). Held-out molecules are never seen in training.

Training. The network denoises coordinates divided by the RMS coordinate of the training split (Bohr);
the condition is a dict of tensors: `elements`, `charges`, `momenta` (a.u.), `mask`. The regression
objective builds the deterministic twin of the same backbone (the baseline). Classifier-free guidance
is not used: `drop_condition` is the identity and `cond_dropout` has no effect.

Rotations, deliberately, at three levels:
1. the store: every event is rotated uniformly at random (`random_rotation`), positions and momenta
   together, so there is no preferred orientation in the data;
2. the network: `AtomTransformer` works in the principal-axes frame of the momentum tensor
   (sign-fixed by third moments), so rotating an event rotates the predicted geometry with it
   (SO(3)-equivariant by construction) and predictions come out in the detector frame of the
   momenta; no alignment is needed to compare them with the truth;
3. training batches: with `training.rotate_batches` every batch is rotated again (positions and
   momenta together), which covers events whose momentum frame is degenerate (symmetric momentum
   patterns, e.g. CH4 in the laser regime), where the frame is deterministic but not equivariant.
Metrics report both the frame MAE (no rotation fitted; the analogue of the anchor's momentum-frame
MAE) and Kabsch-aligned errors.

Sampling. `num_samples` held-out events (round-robin over molecules), `samples_per_condition` draws
each (the regression baseline draws once), conditioned on momenta after the detector's momentum
resolution (seeded, so a model and its baseline see identical conditions). Evaluation: `cei_metrics`
per molecule and overall (MAE, RMSD, distance MAE in Bohr, physics round trip, 90% coverage), plus a
PNG of predicted vs true geometries. `evaluate_folder` does the same for a folder of .xyz molecules.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
import xarray as xr
from diffusers import ModelMixin, SchedulerMixin

from diffpipe.errors import DataError, SpecError
from diffpipe.schemas import EvaluateStage, ModelSpec, Objective, PipelineSpec, RuntimeSpec, SampleStage
from diffpipe.schemas.cei import AtomTransformerSpec, CoulombExplosionData
from diffpipe.storage.formats import read_json, write_dataset, write_json

from ...context import StageContext, StageOutput, resolve_device
from ...nets.atom_transformer import AtomTransformer
from ...nets.flowmap import network_fn
from ...objectives import NetFn
from ...registry import domain
from ...sampling import CountingNet
from ...schedulers import make_scheduler
from ...search.run import SearchRun, make_search
from .batches import ChunkedEventBatches
from .build import build_cei_dataset, open_cei_store
from .inference import (
    balanced_events,
    check_matching_events,
    draw_geometries,
    metrics_table,
    observed_conditions,
    preview,
    samples_dataset,
    score_samples,
)

STORE_FILE = "events.zarr"
SETTINGS_FILE = "cei_domain.json"
SAMPLES_FILE = "samples.zarr"
CONDITION_SEED_OFFSET = 2000
"""Seed offset of the held-out momentum noise (shared by every sample stage with the same `seed`)."""


def position_scale_bohr(store_path: str) -> float:
    """RMS coordinate (Bohr) of the real atoms of the training split."""
    train = open_cei_store(store_path, "train")
    mask = train["mask"].data[..., None]
    squares = da.where(mask, train["positions"].data.astype("float64") ** 2, 0.0).sum()
    return float(np.sqrt(squares.compute() / (3 * mask.sum().compute())))


@contextlib.contextmanager
def in_process_client(runtime: RuntimeSpec) -> Iterator:
    """A Dask client of `runtime.dask_address`, else of a one-worker in-process cluster (small jobs)."""
    from distributed import Client, LocalCluster

    if runtime.dask_address is not None:
        with Client(runtime.dask_address) as client:
            yield client
        return
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


@domain("coulomb_explosion")
class CeiDomain:
    """Coulomb explosion imaging: geometry from ion momenta, with a diffusion model and a regression baseline."""

    def build(self, ctx: StageContext) -> StageOutput:
        """Simulate the data set into `events.zarr` with Dask; record the coordinate scale and options."""
        spec: CoulombExplosionData = ctx.pipeline.data
        store = str(ctx.workdir / STORE_FILE)
        report = build_cei_dataset(store_path=store, n_workers=ctx.runtime.dask_workers,
                                   dask_address=ctx.runtime.dask_address, bars=ctx.progress_bar,
                                   **spec.builder_options())
        if report.n_train_events == 0 or report.n_train_events == report.n_events:
            raise DataError("data.test_fraction", "the molecule split left one side empty",
                            expected="train and held-out molecules",
                            found=f"{len(report.train_molecules)} train / {len(report.test_molecules)} held out")
        scale = position_scale_bohr(store)
        write_json(ctx.workdir / SETTINGS_FILE, {"position_scale_bohr": scale,
                                                 "detector": spec.detector.model_dump(mode="json"),
                                                 "training": spec.training.model_dump(mode="json")})
        metrics = {"n_events": report.n_events, "n_train_events": report.n_train_events,
                   "n_test_events": report.n_events - report.n_train_events, "max_atoms": report.max_atoms,
                   "n_train_molecules": len(report.train_molecules), "test_molecules": report.test_molecules,
                   "rejected": report.rejected, "unconverged_events": report.unconverged_events,
                   "position_scale_bohr": scale, "build_wall_s": report.wall_time_s}
        write_json(ctx.workdir / "metrics.json", metrics)
        summary = (f"CEI ({spec.charge_regime}): {report.n_events} events of {len(report.train_molecules)} train / "
                   f"{len(report.test_molecules)} held-out molecules; {len(report.rejected)} rejected.")
        return StageOutput("dataset", metrics, summary)

    def check_spec(self, spec: PipelineSpec) -> None:
        """The model is the atom transformer (the network over the ions of an event)."""
        if not isinstance(spec.model, AtomTransformerSpec):
            raise SpecError("model.arch", "coulomb_explosion data needs the atom transformer", "atom_transformer",
                            repr(spec.model.arch))

    def build_model(self, model: ModelSpec, ctx: StageContext) -> ModelMixin:
        """An AtomTransformer with random weights; its deterministic twin for the regression objective."""
        if not isinstance(model, AtomTransformerSpec):
            raise SpecError("model.arch", "coulomb_explosion data needs the atom transformer",
                            "atom_transformer", repr(model.arch))
        objective = getattr(ctx.pipeline.stage(ctx.node), "objective", None)
        deterministic = objective is not None and objective.kind == "regression"
        return AtomTransformer(**model.model_dump(exclude={"arch"}), deterministic=deterministic)

    def net(self, model: ModelMixin) -> NetFn:
        """`net(x, timestep, cond)` with cond the dict of elements, charges, momenta and mask."""
        return network_fn(model, self.base_call)

    def base_call(self, model: ModelMixin, x: torch.Tensor, timestep: torch.Tensor,
                  cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The atom transformer on noisy coordinates (what a FlowMapNet around it calls)."""
        return model(x, timestep, cond["elements"], cond["charges"], cond["momenta"], cond["mask"])

    def settings(self, data_path: Path) -> dict[str, Any]:
        """The coordinate scale and options recorded with the data."""
        return read_json(data_path / SETTINGS_FILE)

    def batches(self, ctx: StageContext, device: torch.device) -> ChunkedEventBatches:
        """The training split, read chunk by chunk, augmented per batch."""
        spec: CoulombExplosionData = ctx.pipeline.data
        data = ctx.input_path("data")
        return ChunkedEventBatches(str(data / STORE_FILE), self.settings(data)["position_scale_bohr"],
                                   spec.detector, spec.training, device)

    def drop_condition(self, model: ModelMixin, cond: Any, drop: torch.Tensor) -> Any:
        """No guidance in this domain: conditions are never dropped."""
        return cond

    def sample(self, ctx: StageContext, spec: SampleStage, model: ModelMixin, objective: Objective,
               scheduler: SchedulerMixin | None, info: dict[str, Any]) -> StageOutput:
        """`samples_per_condition` geometries for each of `num_samples` held-out events, as zarr."""
        data = ctx.input_path("data")
        test = open_cei_store(str(data / STORE_FILE), "test")
        chosen = balanced_events(test, spec.num_samples)
        events = test.isel(event=chosen).load().assign(event_index=("event", chosen))
        started, net = time.perf_counter(), CountingNet(self.net(model.to(ctx.device)))
        search = make_search(ctx, spec)
        ds, nfe = self.draw(events, net, objective, scheduler, spec, ctx.pipeline.data, self.settings(data),
                            ctx.runtime, ctx.autocast, search)
        wall = time.perf_counter() - started
        ds.attrs.update(molecule_names=list(test.attrs["molecule_names"]), source="held-out molecules",
                        stage=ctx.node)
        write_dataset(ds, ctx.workdir / SAMPLES_FILE)
        draws = ds.sizes["draw"]
        metrics = {"n_events": len(chosen), "draws_per_event": draws, "scheduler": ds.attrs["scheduler"],
                   "steps": spec.scheduler.steps, "nfe_per_sample": nfe, "sampling_wall_s": wall,
                   "geometries_per_s": len(chosen) * draws / wall, **net.costs(len(chosen) * draws),
                   **(search.metrics() if search else {})}
        nfe = metrics["nfe_per_sample"]
        summary = (f"{draws} geometries for each of {len(chosen)} held-out events with `{ds.attrs['scheduler']}` "
                   f"({nfe} NFE).")
        return StageOutput("samples", metrics, summary)

    def draw(self, events: xr.Dataset, net: NetFn, objective: Objective, scheduler: SchedulerMixin | None,
             spec: SampleStage, data: CoulombExplosionData, settings: dict[str, Any], runtime: RuntimeSpec,
             autocast: Any, search: SearchRun | None = None) -> tuple[xr.Dataset, int]:
        """Samples Dataset for loaded events (seeded by the runtime and the stage's `seed`) and NFE per batch.

        `net` is the model's network function on the runtime's device; `search` an optional inference-time search.
        """
        device = resolve_device(runtime)
        conditions = torch.Generator().manual_seed(runtime.seed + CONDITION_SEED_OFFSET + spec.seed)
        momenta = observed_conditions(events, data.detector, conditions)
        draws = 1 if scheduler is None else spec.samples_per_condition
        gen = torch.Generator().manual_seed(runtime.seed + 1000 + spec.seed)
        positions, nfe = draw_geometries(net, objective, scheduler, spec.scheduler.steps,
                                         draws, spec.batch_size, events, momenta,
                                         settings["position_scale_bohr"], gen, device, autocast, search)
        name = type(scheduler).__name__ if scheduler is not None else "direct (regression)"
        return samples_dataset(positions, events, momenta, {"scheduler": name, "nfe_per_sample": nfe}), nfe

    def evaluate(self, ctx: StageContext, spec: EvaluateStage) -> StageOutput:
        """CEI metrics of the samples against the true held-out geometries, per molecule and overall."""
        samples = xr.open_zarr(ctx.input_path("samples") / SAMPLES_FILE, consolidated=False).load()
        test = open_cei_store(str(ctx.input_path("data") / STORE_FILE), "test")
        reference = test.isel(event=samples["event_index"].values).load()
        check_matching_events(samples, reference, f"{ctx.node}: samples of '{samples.attrs.get('stage')}'")
        names = list(test.attrs["molecule_names"])
        with ctx.progress_bar("evaluation steps (scores, preview)", 2) as advance:
            scores = score_samples(samples, reference["positions"].values, names)
            scores["scheduler"] = samples.attrs["scheduler"]
            advance(1)
            image = preview(samples, reference["positions"].values, names, ctx.workdir / "geometries.png",
                            f"{ctx.node}: {samples.attrs['scheduler']} (circles: true, dots: draws, x: mean)")
            advance(1)
        return StageOutput("metrics", scores, metrics_table(scores), {"predicted vs true geometries": image})

    def evaluate_folder(self, pipeline: Any, data_path: Path, checkpoints: dict[str, tuple[SampleStage, Path]],
                        folder: Path, events_per_molecule: int, out_dir: Path | None = None) -> dict[str, Any]:
        """Build events of the .xyz molecules in `folder` and score every named sample stage's checkpoint on them.

        `checkpoints` maps a sample stage's name to (its spec, the checkpoint folder it samples). Bad files
        are reported under `rejected` by name; the others are evaluated. Writes PNG previews to `out_dir`.
        """
        from diffpipe.tasks.sample import load_checkpoint

        data: CoulombExplosionData = pipeline.data
        settings = self.settings(data_path)
        with tempfile.TemporaryDirectory(prefix="diffpipe-xyz-") as tmp:
            events, names, rejected = self.folder_events(data, pipeline.runtime, folder, events_per_molecule,
                                                         Path(tmp) / STORE_FILE)
        report: dict[str, Any] = {"folder": str(folder), "molecules": sorted(set(names)), "rejected": rejected,
                                  "events_per_molecule": events_per_molecule, "stages": {}}
        for stage_name, (stage, checkpoint) in checkpoints.items():
            model, objective, _ = load_checkpoint(checkpoint, stage.weights)
            events, skipped = supported_events(events, names, model)
            report["rejected"] += [s for s in skipped if s not in report["rejected"]]
            if events.sizes["event"] == 0:
                raise DataError(str(folder), "no molecule the model can take", found="; ".join(report["rejected"]))
            scheduler = make_scheduler(objective, stage.scheduler.name, stage.scheduler.options)
            net = self.net(model.to(resolve_device(pipeline.runtime)))
            samples, _ = self.draw(events, net, objective, scheduler, stage, data, settings, pipeline.runtime,
                                   contextlib.nullcontext)
            scores = score_samples(samples, events["positions"].values, names)
            scores["scheduler"] = samples.attrs["scheduler"]
            report["stages"][stage_name] = scores
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                preview(samples, events["positions"].values, names, out_dir / f"{stage_name}_geometries.png",
                        f"{stage_name} on {folder.name}")
        return report

    def folder_events(self, data: CoulombExplosionData, runtime: RuntimeSpec, folder: Path, events_per_molecule: int,
                      store: Path) -> tuple[xr.Dataset, list[str], list[str]]:
        """Events of every good .xyz file in `folder`, simulated exactly as the data set's (loaded), names, problems."""
        options = {**data.builder_options(), "include_g2": False, "xyz_folder": str(folder),
                   "geometries_per_molecule": events_per_molecule, "test_fraction": 1.0, "test_molecules": None}
        with in_process_client(runtime) as client:
            report = build_cei_dataset(store_path=str(store), client=client, **options)
        events = open_cei_store(str(store), "test").load()
        events = events.assign(event_index=("event", np.arange(events.sizes["event"])))
        return events, list(events.attrs["molecule_names"]), list(report.rejected)


def supported_events(events: xr.Dataset, names: list[str], model: ModelMixin) -> tuple[xr.Dataset, list[str]]:
    """Events whose elements and charges fit the model's embeddings, and one message per molecule that does not."""
    too_big = (events["element"].values > model.config.max_atomic_number).any(1) | \
        (events["charge"].values > model.config.max_charge).any(1)
    bad = sorted({names[i] for i in events["molecule_id"].values[too_big]})
    messages = [f"molecule {name}: element or charge beyond the model's embeddings "
                f"(Z <= {model.config.max_atomic_number}, q <= {model.config.max_charge})" for name in bad]
    return events.isel(event=np.flatnonzero(~too_big)), messages

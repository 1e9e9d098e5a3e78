"""The `energy` data kind: a target known up to a constant, its exact log Z and ground-truth samples.

`build` writes `reference.zarr` (x, log_prob; attrs: log_z, source) and `target.json` (exact facts). Samples
are exact where the target allows (mixture, many-well, lattices small enough to enumerate); otherwise
Dask-parallel Metropolis chains run here, and the build fails unless their split R-hat of the log density
is at most `mcmc.max_rhat` and, where the exact log Z gives E[H], the chains' mean energy agrees with it.
`evaluate` scores a `neural_sampler` stage's weighted samples (tasks/metrics/samplers.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import xarray as xr
from diffusers import ModelMixin

from diffpipe.errors import InputError, StageError
from diffpipe.schemas import EvaluateStage, ModelSpec
from diffpipe.schemas.targets import EnergyData
from diffpipe.storage.formats import open_dataset, read_json, write_dataset, write_json

from ..context import StageContext, StageOutput
from ..metrics.samplers import plot_reference, sampler_metrics
from ..registry import domain
from ..targets import make_target
from ..targets.mcmc import run_chains, split_rhat

REFERENCE_FILE = "reference.zarr"
TARGET_FILE = "target.json"
SAMPLES_FILE = "samples.zarr"
ENERGY_AGREEMENT_SE = 6.0
"""How many standard errors the MCMC mean energy may sit from the exact one."""


def load_reference(path: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Ground-truth samples of a data artifact and its `target.json` facts."""
    ds = open_dataset(path / REFERENCE_FILE).load()
    return torch.from_numpy(ds["x"].values), read_json(path / TARGET_FILE)


def load_samples(path: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A neural sampler's samples, log importance weights and attributes."""
    ds = open_dataset(path / SAMPLES_FILE).load()
    return torch.from_numpy(ds["x"].values), torch.from_numpy(ds["log_w"].values), dict(ds.attrs)


@domain("energy")
class EnergyDomain:
    """Targets known up to a constant; only `neural_sampler` and `evaluate` stages use them."""

    def build(self, ctx: StageContext) -> StageOutput:
        """Exact log Z and ground-truth samples (exact, or checked MCMC on Dask) into the data artifact."""
        spec: EnergyData = ctx.pipeline.data
        target = make_target(spec.target)
        gen = torch.Generator().manual_seed(spec.seed)
        log_z = target.log_z()
        facts: dict[str, Any] = {"target": spec.target.model_dump(mode="json"), "log_z": log_z,
                                 "discrete": target.discrete, "dim": target.dim}
        x = target.exact_sample(spec.num_reference, gen)
        if x is not None:
            facts["source"] = "exact"
        else:
            x = self._mcmc(ctx, spec, target, facts, gen)
        if target.discrete:
            facts["num_states"] = target.num_states
            facts["exact_mean_energy"] = target.exact_mean_energy()
        if hasattr(target, "means"):
            facts["means"] = target.means.tolist()
        logp = target.log_prob(x).double()
        coord = "site" if target.discrete else "coord"
        ds = xr.Dataset({"x": (("sample", coord), x.numpy()), "log_prob": ("sample", logp.numpy())},
                        attrs={"target": spec.target.kind, "source": facts["source"],
                               "log_z": math.nan if log_z is None else log_z})
        write_dataset(ds, ctx.workdir / REFERENCE_FILE)
        write_json(ctx.workdir / TARGET_FILE, facts)
        plot = plot_reference(target, x, ctx.workdir / "reference.png", f"{spec.target.kind}: ground truth")
        metrics = {k: v for k, v in facts.items() if k in ("log_z", "source", "mcmc_rhat", "dim",
                                                          "mcmc_mean_energy", "exact_mean_energy")}
        metrics["num_reference"] = len(x)
        lz = "no exact log Z" if log_z is None else f"log Z = {log_z:.6f}"
        summary = f"{spec.target.kind}: {len(x)} {facts['source']} ground-truth samples, {lz}."
        return StageOutput("dataset", metrics, summary, {"ground truth": plot})

    def _mcmc(self, ctx: StageContext, spec: EnergyData, target: Any, facts: dict[str, Any],
              gen: torch.Generator) -> torch.Tensor:
        mc = spec.mcmc
        ctx.log(f"data: {mc.chains} MCMC chains x {mc.walkers_per_chain} walkers, {mc.burn_in} + {mc.sweeps} sweeps")
        states, logps = run_chains(spec, ctx.runtime.dask_address, ctx.runtime.dask_workers, ctx.progress_bar)
        rhat = split_rhat(logps)
        facts.update(source="mcmc", mcmc_rhat=rhat, mcmc_draws=int(logps.size))
        if rhat > mc.max_rhat:
            raise StageError(f"data: the MCMC ground truth did not converge: split R-hat of the log density "
                             f"{rhat:.3f} > mcmc.max_rhat {mc.max_rhat}; raise data.mcmc.burn_in or sweeps")
        exact = target.exact_mean_energy() if target.discrete else None
        if exact is not None:
            energies = -logps / target.beta
            per_walker = energies.mean(axis=1)
            se = per_walker.std(ddof=1) / math.sqrt(len(per_walker))
            facts["mcmc_mean_energy"] = float(energies.mean())
            if abs(energies.mean() - exact) > ENERGY_AGREEMENT_SE * se + 1e-9:
                raise StageError(f"data: the MCMC mean energy {energies.mean():.4f} disagrees with the exact "
                                 f"{exact:.4f} (standard error {se:.4f}); raise data.mcmc.burn_in or sweeps")
        pooled = torch.from_numpy(states.reshape(-1, states.shape[-1]))
        pick = torch.randperm(len(pooled), generator=gen)[: spec.num_reference]
        return pooled[pick] if target.discrete else pooled[pick].float()

    def build_model(self, model: ModelSpec, ctx: StageContext) -> ModelMixin:
        """A time-conditioned MLP (continuous targets) or a masked transformer over lattice sites."""
        spec: EnergyData = ctx.pipeline.data
        target = make_target(spec.target)
        if model.arch == "time_mlp":
            from ..nets.time_mlp import TimeMLP

            return TimeMLP(dim=target.dim, hidden=model.hidden, layers=model.layers,
                           time_embedding=model.time_embedding)
        if model.arch == "mdlm":
            from ..nets.mdlm import MaskedDiffusionTransformer

            return MaskedDiffusionTransformer(
                vocab_size=target.num_states + 1, max_length=target.dim, mask_token_id=target.num_states,
                d_model=model.d_model, num_layers=model.num_layers, num_heads=model.num_heads,
                mlp_ratio=model.mlp_ratio, dropout=model.dropout)
        raise InputError("model.arch", "energy targets build a time_mlp or mdlm network", "time_mlp or mdlm",
                         repr(model.arch))

    def batches(self, ctx: StageContext, device: torch.device) -> Any:
        """Energy targets have no training data."""
        raise InputError("data.kind", "an energy target has no training data; train a neural_sampler stage",
                         "a neural_sampler stage", "a data-driven training stage")

    def evaluate(self, ctx: StageContext, spec: EvaluateStage) -> StageOutput:
        """Sampler metrics of the referenced samples against the exact log Z and the ground truth."""
        data: EnergyData = ctx.pipeline.data
        target = make_target(data.target)
        reference, facts = load_reference(ctx.input_path("data"))
        x, log_w, attrs = load_samples(ctx.input_path("samples"))
        gen = torch.Generator().manual_seed(spec.seed)
        if spec.max_reference and len(reference) > spec.max_reference:
            reference = reference[torch.randperm(len(reference), generator=gen)[: spec.max_reference]]
        metrics, images = sampler_metrics(target, facts, x, log_w, reference, spec, gen, ctx.workdir)
        metrics.update({k: attrs[k] for k in ("method", "energy_evals") if k in attrs})
        timings = ctx.input_timings("samples")
        metrics.update({k: timings[k] for k in ("train_wall_s", "sampling_wall_s") if k in timings})
        rows = [f"| {k} | {v:.5g} |" for k, v in metrics.items() if isinstance(v, float)]
        summary = "| metric | value |\n|---|---|\n" + "\n".join(rows)
        return StageOutput("metrics", metrics, summary, images)


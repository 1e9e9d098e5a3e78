"""A neural sampler resumed from its checkpoint (network, optimizer, generator, buffer, energy count) reaches
the same weights, samples and weights as the uninterrupted run (the warm-start case resumes after a buffer
weighted at the warm beta and refills at the target beta)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import xarray as xr
from safetensors.torch import load_file

from diffpipe.schemas import PipelineSpec
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.registry import get_domain, get_stage

LATTICE = {"arch": "mdlm", "d_model": 16, "num_layers": 1, "num_heads": 2}
CASES = {
    "mdns": ({"kind": "ising", "size": 3, "beta": 0.4}, LATTICE, {"resample_every": 3}),
    "mdns_warm": ({"kind": "ising", "size": 3, "beta": 0.6}, LATTICE,
                  {"resample_every": 3, "warm_start_beta": 0.2, "warm_start_steps": 7}),
    "naas": ({"kind": "many_well", "dim": 2, "wells": 1}, {"arch": "time_mlp", "hidden": 16, "layers": 1},
             {"resample_every": 3, "sde_steps": 8, "samples_per_step": 16}),
    "pdns": ({"kind": "gmm", "num_modes": 4, "loc_scale": 4.0}, {"arch": "time_mlp", "hidden": 16, "layers": 1},
             {"resample_every": 3, "sde_steps": 8, "samples_per_step": 16, "sigma": 4.0}),
    "adjoint": ({"kind": "many_well", "dim": 2, "wells": 1}, {"arch": "time_mlp", "hidden": 16, "layers": 1},
                {"resample_every": 3, "sde_steps": 8, "samples_per_step": 16, "buffer_size": 40}),
}


def run_stage(spec: PipelineSpec, store: ArtifactStore, data: Path, out: Path) -> None:
    """Run the neural_sampler stage with a fixed cache key (so a second call resumes its checkpoints)."""
    ref = store.publish(data, "dataset", {})
    ctx = StageContext(spec, "sampler", "k" * 64, {"data": ref}, store, out, progress=False)
    get_stage("neural_sampler")(ctx)


@pytest.mark.parametrize("method", sorted(CASES))
def test_resumed_sampler_matches_the_uninterrupted_run(tmp_path: Path, method: str) -> None:
    target, model, options = CASES[method]
    raw = {"name": "r", "data": {"kind": "energy", "target": target, "num_reference": 20}, "model": model,
           "stages": [{"name": "sampler", "stage": "neural_sampler", "method": method.split("_")[0], "steps": 10,
                       "batch_size": 16, "num_samples": 32, "checkpoint_every": 4, **options}],
           "runtime": {"device": "cpu"}, "storage": {"root": str(tmp_path / "store")}}
    spec = PipelineSpec.model_validate(raw)
    store = ArtifactStore(str(tmp_path / "store"))
    data = tmp_path / "data"
    data.mkdir()
    get_domain("energy").build(StageContext(spec, "data", "d" * 64, {}, store, data))
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    full.mkdir()
    resumed.mkdir()
    run_stage(spec, store, data, full)  # uninterrupted 0 -> 10, leaving its checkpoints at 4 and 8
    assert store.run_dir("k" * 64).steps() == [4, 8]
    run_stage(spec, store, data, resumed)  # resumes at 8 -> 10
    a, b = load_file(full / "model" / "diffusion_pytorch_model.safetensors"), load_file(
        resumed / "model" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (xr.open_zarr(p / "samples.zarr", consolidated=False).load() for p in (full, resumed))
    assert (sa["x"].values == sb["x"].values).all() and (sa["log_w"].values == sb["log_w"].values).all()
    assert sa.attrs["energy_evals"] == sb.attrs["energy_evals"] > 0

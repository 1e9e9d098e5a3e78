"""File formats of artifacts: diffusers checkpoints (safetensors), zarr v3 via xarray, JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from diffusers import ModelMixin
from safetensors.torch import load_file, save_file

MODEL_DIR = "model"
ONLINE_MODEL_DIR = "model_online"
SCHEDULER_DIR = "scheduler"
TRAINING_FILE = "training.json"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON with sorted keys (stable bytes for stable digests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def write_dataset(ds: xr.Dataset, path: Path) -> None:
    """Write an xarray Dataset as a zarr v3 store."""
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)


def open_dataset(path: Path | str) -> xr.Dataset:
    """Open a zarr store lazily (Dask-backed)."""
    return xr.open_zarr(path, consolidated=False)


def save_model(model: ModelMixin, path: Path) -> None:
    """Save a diffusers model folder (config.json + safetensors weights).

    The config loses diffusers' `_name_or_path` (the folder the model was loaded from): a location is not
    content, and an artifact's digest must not depend on where its init checkpoint lay.
    """
    model.save_pretrained(path, safe_serialization=True)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    if config.pop("_name_or_path", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Save a flat dict of tensors as safetensors."""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file."""
    return load_file(str(path))

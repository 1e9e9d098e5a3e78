"""The global-mean temperature a forcing implies: the verifiable judge of RL on the climate emulator.

The judge is the closed-form regression pattern scaling already uses (evaluation.py): ensemble-mean
global tas regressed on the global forcers (cumulative CO2, CH4, area-mean SO2 and BC) over the
scenarios the store's normalisation statistics come from (the training scenarios). A generated field
is judged by how far its own area-weighted global-mean tas lies from that implied response, in kelvin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from diffpipe.tasks.climate_baselines import GlobalTemperatureRegression

from .batches import Forcing
from .evaluation import fit_global_response
from .layout import GLOBAL_FORCERS, MAP_FORCERS, OUTPUT_VARIABLES, open_climate_store

TAS = OUTPUT_VARIABLES.index("tas")


@dataclass
class ForcingResponse:
    """Implied and generated global-mean tas (K) of normalised emulator batches."""

    regression: GlobalTemperatureRegression
    lat_weights: torch.Tensor
    """(lat,) cos(latitude) normalised to mean 1."""
    map_mean: torch.Tensor
    map_std: torch.Tensor
    scalar_mean: torch.Tensor
    scalar_std: torch.Tensor
    tas_mean: float
    tas_std: float

    @classmethod
    def from_store(cls, path: Path | str) -> ForcingResponse:
        """Fit the regression on the store's statistics scenarios and read its normalisation."""
        ds = open_climate_store(path)
        regression = fit_global_response(ds, list(ds.attrs["stats_scenarios"]))
        weights = np.cos(np.deg2rad(ds["lat"].values))

        def stat(name: str) -> torch.Tensor:
            return torch.as_tensor(ds[name].values, dtype=torch.float64)

        return cls(regression, torch.as_tensor(weights / weights.mean()), stat("forcing_maps_mean"),
                   stat("forcing_maps_std"), stat("forcing_global_mean"), stat("forcing_global_std"),
                   float(ds["outputs_mean"].values[TAS]), float(ds["outputs_std"].values[TAS]))

    def area_mean(self, field: torch.Tensor) -> torch.Tensor:
        """Latitude-weighted mean of (..., lat, lon)."""
        return (field * self.lat_weights.to(field.device)[:, None]).mean((-2, -1))

    def implied(self, cond: Forcing) -> torch.Tensor:
        """(batch,) global-mean tas the forcing of this year (the last of the history stack) implies."""
        maps = cond.maps[:, -len(MAP_FORCERS):].double().cpu()
        maps = maps * self.map_std[:, None, None] + self.map_mean[:, None, None]
        scalars = cond.scalars[:, -len(GLOBAL_FORCERS):].double().cpu() * self.scalar_std + self.scalar_mean
        forcers = {name: scalars[:, i] for i, name in enumerate(GLOBAL_FORCERS)}
        forcers |= {name: self.area_mean(maps[:, i]) for i, name in enumerate(MAP_FORCERS)}
        predictors = xr.Dataset({name: ("sample", v.numpy()) for name, v in forcers.items()})
        return torch.from_numpy(np.asarray(self.regression.predict(predictors).values))

    def generated(self, samples: torch.Tensor) -> torch.Tensor:
        """(batch,) global-mean tas of normalised (batch, variable, lat, lon) emulator samples."""
        return self.area_mean(samples[:, TAS].double().cpu() * self.tas_std + self.tas_mean)

"""Bad data inside a stage, through the real CLI and flow: exit 2, one `error:` line, no traceback, no Dask noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
import yaml
from climate_helpers import SCENARIO_YEARS, climatebench_pair, write_pair
from test_climate_pipeline import files_spec


@pytest.mark.slow
def test_nan_in_a_climatebench_file_prints_one_error_line(tmp_path: Path) -> None:
    folder = tmp_path / "climatebench"
    folder.mkdir()
    for i, name in enumerate(SCENARIO_YEARS):
        inputs, outputs = climatebench_pair(name, seed=i)
        if name == "ssp126":
            inputs = inputs.copy(deep=True)
            inputs["SO2"].values[2, 1, 3] = float("nan")
        write_pair(folder, name, (inputs, outputs))
    assert isinstance(xr.open_dataset(folder / "inputs_ssp126.nc")["SO2"], xr.DataArray)
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(files_spec(tmp_path / "artifacts", folder)))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the CLI's own temporary server
    done = subprocess.run([sys.executable, "-m", "diffpipe.flows.cli", "run", str(spec)], capture_output=True,
                          text=True, env=env, timeout=600)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1 and "inputs_ssp126.nc" in errors[0] and "'SO2'" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "distributed." not in done.stderr, done.stderr
    assert not any((tmp_path / "artifacts").rglob("climate.zarr")), "nothing half-written"

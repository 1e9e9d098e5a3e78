"""Fixtures of the climate tests: a folder of small ClimateBench-layout files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from climate_helpers import SCENARIO_YEARS, climatebench_pair, write_pair

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def climatebench_dir(tmp_path: Path) -> Path:
    """A folder with three valid ClimateBench-layout scenarios (netCDF3)."""
    folder = tmp_path / "climatebench"
    folder.mkdir()
    for i, name in enumerate(SCENARIO_YEARS):
        write_pair(folder, name, climatebench_pair(name, seed=i))
    return folder

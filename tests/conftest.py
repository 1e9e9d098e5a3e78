"""Shared fixtures: offline hub, a tiny digits spec, one temporary Prefect API for the session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread each beats oversubscribed cores

from pathlib import Path  # noqa: E402

# Prefect sets up its logging (replacing the root logger's handlers) when its API is first imported: at collection,
# not at a test's first flow run, where it would drop the handler `caplog` reads.
import prefect.main  # noqa: E402,F401
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tiny_specs import run_spec, tiny_digits_spec  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_spec(tmp_path: Path) -> dict:
    """A tiny digits pipeline dict with its artifact root in a temporary folder."""
    return tiny_digits_spec(tmp_path / "artifacts")


@pytest.fixture
def tiny_spec_file(tmp_path: Path, tiny_spec: dict) -> Path:
    """The tiny digits pipeline written as YAML."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_spec))
    return path


@pytest.fixture(scope="session", autouse=True)
def remote_read_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Cached copies of remote (s3://, memory://) artifacts go to a temporary folder, not ~/.cache."""
    os.environ.setdefault("DIFFPIPE_CACHE_DIR", str(tmp_path_factory.mktemp("diffpipe-cache")))


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API (SQLite in a temp dir) for in-process flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def run_pipeline(prefect_api):
    """`run_pipeline(raw)`: validate a spec dict and run it through the real flow; stage name -> summary entry."""
    return run_spec

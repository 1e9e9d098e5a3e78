"""Stages on a real Dask cluster: a distributed scheduler and two workers on 127.0.0.1, `runtime.dask_address`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import free_port
from tiny_specs import tiny_digits_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def dask_cluster(tmp_path: Path):
    """`dask scheduler` and two 1-thread `dask worker` processes on loopback; yields the scheduler address."""
    port, bin_dir = free_port(), Path(sys.executable).parent
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": tmp_path}
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], **quiet)]
    procs += [subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                "--name", f"w{i}"], **quiet) for i in range(2)]
    from distributed import Client

    deadline = time.monotonic() + 120
    with Client(address, timeout=120) as client:
        while len(client.scheduler_info()["workers"]) < 2:
            assert time.monotonic() < deadline, "the Dask workers never joined"
            time.sleep(0.5)
    yield address
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def test_stages_run_on_the_dask_workers(tmp_path: Path, dask_cluster: str) -> None:
    spec = tiny_digits_spec(tmp_path / "artifacts")
    spec["stages"] = spec["stages"][:1]
    spec["stages"][0].update(steps=4, checkpoint_every=4)
    spec["runtime"]["dask_address"] = dask_cluster
    path = tmp_path / "dask.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-m", "diffpipe.flows.cli", "run", str(path), "--json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s["state"] for s in json.loads(proc.stdout)["stages"]] == ["executed", "executed"]
    assert "Connecting to an existing Dask cluster" in proc.stderr
    from distributed import Client

    with Client(dask_cluster) as client:  # the node tasks ran in the worker processes, not in the flow's
        hosts = {w["name"] for w in client.scheduler_info()["workers"].values()}
        assert hosts == {"w0", "w1"}
        ran = client.run(lambda dask_worker: sum(1 for _ in dask_worker.data) + len(dask_worker.state.log))
    assert sum(ran.values()) > 0

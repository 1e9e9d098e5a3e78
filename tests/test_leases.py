"""Leases on cache keys: one computation per key across threads and processes, expiry after a killed holder."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from tiny_specs import tiny_digits_spec

from diffpipe.storage import ArtifactStore

KEY = "k" * 64


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    root = {"local": str(tmp_path / "root"), "memory": f"memory://lease-{uuid.uuid4().hex}"}[request.param]
    return ArtifactStore(root, lease_ttl_s=2.0)


def test_lease_is_exclusive_across_threads(store: ArtifactStore) -> None:
    inside, overlaps, entered = [0], [0], []

    def work(i: int) -> None:
        with store.lease(KEY, poll_s=0.01):
            inside[0] += 1
            overlaps[0] += inside[0] > 1
            entered.append(i)
            time.sleep(0.05)
            inside[0] -= 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(entered) == list(range(6)) and overlaps[0] == 0
    assert store.active_leases() == {} and store.lease_info(KEY).released


def test_active_leases_and_renewal(store: ArtifactStore) -> None:
    with store.lease(KEY) as held:
        first = held.expires
        assert set(store.active_leases()) == {KEY} and store.active_leases()[KEY].holder == held.holder
        time.sleep(1.2)  # past a quarter of the TTL: the heartbeat renewed it
        assert store.lease_info(KEY).expires > first
    assert store.active_leases() == {}


def test_a_killed_holders_lease_expires(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "root"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom diffpipe.storage import ArtifactStore\n"
        f"lease = ArtifactStore({str(root)!r}, lease_ttl_s=2.0).lease({KEY!r})\n"
        "lease.__enter__()\nprint('held', flush=True)\ntime.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    store = ArtifactStore(str(root), lease_ttl_s=2.0)
    assert set(store.active_leases()) == {KEY}
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING), store.lease(KEY, poll_s=0.05) as mine:
        waited = time.monotonic() - t0
        assert mine.generation == 1
    assert 0.5 < waited < 10 and "expired" in caplog.text


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "HF_HUB_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.mark.slow
def test_two_runs_of_one_spec_at_once_compute_each_stage_once(tmp_path: Path) -> None:
    spec = tiny_digits_spec(tmp_path / "artifacts")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs = [subprocess.Popen([sys.executable, "-m", "diffpipe.flows.cli", "run", str(path), "--json"], cwd=tmp_path,
                             env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outs = [r.communicate(timeout=600) for r in runs]
    for r, (_, err) in zip(runs, outs, strict=True):
        assert r.returncode == 0, err[-3000:]
    summaries = [{s["name"]: s for s in json.loads(out)["stages"]} for out, _ in outs]
    for name in summaries[0]:
        states = sorted(s[name]["state"] for s in summaries)
        assert states == ["cached", "executed"], (name, states)  # built once, reused by the other run
        assert summaries[0][name]["artifact"] == summaries[1][name]["artifact"]
    root = tmp_path / "artifacts"
    assert len(list(root.glob("objects/*/*"))) == len(list(root.glob("manifests/*.json"))) == 4
    assert len(list(root.glob("keys/*.json"))) == 4
    assert all(json.loads(p.read_text())["released"] for p in root.glob("leases/*/*.json"))

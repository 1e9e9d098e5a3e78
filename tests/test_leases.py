"""Leases on cache keys: one computation per key across threads and processes, expiry after a killed holder."""

from __future__ import annotations

import copy
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

from diffpipe.flows.plan import status
from diffpipe.flows.spec_loading import validate_spec
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


def _at_once(tmp_path: Path, specs: list[dict]) -> list[dict[str, dict]]:
    """`diffpipe run` of every spec, all started at once as their own processes; stage name -> entry, per run."""
    paths = []
    for i, raw in enumerate(specs):
        paths.append(tmp_path / f"spec{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(raw))
    runs = [subprocess.Popen([sys.executable, "-m", "diffpipe.flows.cli", "run", str(path), "--json"],
                             cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for path in paths]
    outs = [r.communicate(timeout=600) for r in runs]
    for r, (_, err) in zip(runs, outs, strict=True):
        assert r.returncode == 0, err[-3000:]
    return [{s["name"]: s for s in json.loads(out)["stages"]} for out, _ in outs]


def _index_agrees(root: Path, pairs: list[tuple[dict, dict[str, dict]]]) -> None:
    """Every lease released; the index agrees with what each run reported, and every object verifies."""
    assert all(json.loads(p.read_text())["released"] for p in root.glob("leases/*/*.json"))
    store = ArtifactStore(str(root))
    for raw, run in pairs:
        rows = status(validate_spec(copy.deepcopy(raw)), store, verify=True)
        assert {r.name: (r.state, r.ref.sha256) for r in rows} == {
            n: ("cached", s["artifact"]["sha256"]) for n, s in run.items()}


def test_two_specs_on_one_root_at_once(tmp_path: Path) -> None:
    """Spec A and spec B (same data and pretrain, each its own sample) as two processes on one root at once."""
    root = tmp_path / "artifacts"
    a = tiny_digits_spec(root)
    a["stages"] = a["stages"][:2]  # data -> pretrain -> sample: seconds of work, the startup dominates
    a["stages"][0].update(steps=4, checkpoint_every=4, log_every=4, warmup_steps=0)
    a["stages"][1]["num_samples"] = 8
    b = {**copy.deepcopy(a), "name": "digits_other"}
    b["stages"][1]["num_samples"] = 12
    ra, rb = _at_once(tmp_path, [a, b])
    for name in ("data", "pretrain"):  # shared: built by one run, the other waited on its lease and reused it
        assert sorted((ra[name]["state"], rb[name]["state"])) == ["cached", "executed"], name
        assert ra[name]["artifact"] == rb[name]["artifact"]
    assert ra["sample"]["state"] == rb["sample"]["state"] == "executed"
    assert ra["sample"]["artifact"]["sha256"] != rb["sample"]["artifact"]["sha256"]
    assert len(list(root.glob("objects/*/*"))) == len(list(root.glob("manifests/*.json"))) == 4
    assert len(list(root.glob("keys/*.json"))) == 4
    _index_agrees(root, [(a, ra), (b, rb)])


@pytest.mark.slow
def test_runs_of_one_spec_and_of_another_on_one_root_at_once(tmp_path: Path) -> None:
    """Two runs of spec A and one of spec B (same data and pretrain, its own sample) on one root, at once."""
    root = tmp_path / "artifacts"
    a = tiny_digits_spec(root)
    b = {**copy.deepcopy(a), "name": "digits_other"}
    b["stages"][1]["num_samples"] = 32
    a1, a2, b1 = _at_once(tmp_path, [a, a, b])
    for name in ("data", "pretrain"):  # shared by both specs: built once, reused by the two other runs
        assert sorted(run[name]["state"] for run in (a1, a2, b1)) == ["cached", "cached", "executed"], name
        assert a1[name]["artifact"] == a2[name]["artifact"] == b1[name]["artifact"]
    for name in ("sample", "evaluate"):  # A's built once; B's its own
        assert sorted(run[name]["state"] for run in (a1, a2)) == ["cached", "executed"], name
        assert a1[name]["artifact"] == a2[name]["artifact"] and b1[name]["state"] == "executed"
        assert b1[name]["artifact"]["sha256"] != a1[name]["artifact"]["sha256"]
    assert len(list(root.glob("objects/*/*"))) == len(list(root.glob("manifests/*.json"))) == 6
    assert len(list(root.glob("keys/*.json"))) == 6
    _index_agrees(root, [(a, a1), (b, b1)])

"""Stopping real `diffpipe run`s: SIGTERM stops within seconds with a checkpoint; after SIGTERM or kill -9 of
the run's own pid (not its group) no process it started survives, the temporary Prefect API server included.
SIGTERM during sampling stops at a batch, publishes nothing, leaves no staging folder or held lease behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_specs import tiny_digits_spec

pytestmark = pytest.mark.slow
STEPS = 5000


def _spec_file(tmp_path: Path) -> Path:
    spec = tiny_digits_spec(tmp_path / "artifacts")
    spec["stages"] = spec["stages"][:1]
    spec["stages"][0].update({"steps": STEPS, "checkpoint_every": STEPS // 2, "log_every": 4})
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _start(spec: Path, tmp_path: Path, extra: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONUNBUFFERED": "1",
           "TMPDIR": str(tmp_path / "tmp")}
    env.pop("PREFECT_API_URL", None)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "diffpipe.flows.cli", "run", str(spec), *(extra or [])],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def _wait_until_training(proc: subprocess.Popen, lines: list[str], marker: str) -> set[int]:
    """Read the run's output until `marker` appears; return its children (server, watchdog) then."""
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return _children(proc.pid)
        assert time.monotonic() < deadline, "training never started"
    raise AssertionError("the run ended before it was stopped:\n" + "".join(lines[-40:]))


def _gone_within(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(pids)


def test_sigterm_stops_with_a_checkpoint_and_kill_9_leaves_no_survivors(tmp_path: Path) -> None:
    spec = _spec_file(tmp_path)
    proc, lines = _start(spec, tmp_path), []
    children = _wait_until_training(proc, lines, "pretrain step 8/")
    assert len(children) >= 2  # the watchdog and Prefect's temporary API server
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.communicate(timeout=60)[0]
    assert time.monotonic() - sent < 30, "the run took too long to stop"
    assert proc.returncode == 130, out[-3000:]
    assert "checkpoint saved, rerun to resume" in out
    steps = sorted(int(p.parent.name[5:]) for p in (tmp_path / "artifacts").glob("runs/*/step-*/COMPLETE"))
    assert steps and 8 <= steps[-1] < STEPS // 2  # saved where it stopped, not at a periodic checkpoint
    assert not _gone_within(children, 15), "processes outlived the run after SIGTERM"

    proc, lines = _start(spec, tmp_path), []
    children = _wait_until_training(proc, lines, f"resumed from the checkpoint at step {steps[-1]}")
    os.kill(proc.pid, signal.SIGKILL)  # the run's pid only: its children are not signalled
    proc.wait(timeout=30)
    proc.stdout.close()
    assert not _gone_within(children, 15), "processes outlived the run after kill -9"


def test_sigterm_during_sampling_publishes_nothing_and_the_rerun_completes(tmp_path: Path) -> None:
    from diffpipe.storage import ArtifactStore

    spec = tiny_digits_spec(tmp_path / "artifacts")
    spec["stages"] = spec["stages"][:2]  # pretrain -> sample
    spec["stages"][0].update({"steps": 8, "checkpoint_every": 8})
    spec["stages"][1].update({"num_samples": 200_000, "batch_size": 100, "scheduler": {
        "name": "FlowMatchEulerDiscreteScheduler", "steps": 50}})  # minutes of sampling: stopped long before
    path = tmp_path / "sampling.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc, lines = _start(path, tmp_path), []
    children = _wait_until_training(proc, lines, "pretrain: published")
    time.sleep(3)  # inside the sample stage
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.communicate(timeout=60)[0]
    assert time.monotonic() - sent < 30, "the run took too long to stop"
    assert proc.returncode == 130, out[-3000:]
    assert "sample: SIGTERM: stopped after" in out and "nothing published" in out  # at a batch, not forced
    assert not _gone_within(children, 15), "processes outlived the run after SIGTERM"
    store = ArtifactStore(str(tmp_path / "artifacts"))
    assert len(list((tmp_path / "artifacts" / "keys").glob("*.json"))) == 2  # data and pretrain only
    assert not list((tmp_path / "tmp").glob("diffpipe-*"))  # the sample stage's staging folder is gone
    leases = [p.name for p in (tmp_path / "artifacts" / "leases").iterdir()]
    assert len(leases) == 3 and all(store.lease_info(k).released for k in leases)  # a rerun does not wait

    proc = _start(path, tmp_path, ["--set", "stages.sample.num_samples=50"])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert len(list((tmp_path / "artifacts" / "keys").glob("*.json"))) == 3

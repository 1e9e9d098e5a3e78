"""Kill a real `diffpipe run` with SIGKILL mid-training; the rerun takes its expired lease over and resumes to
identical weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_specs import tiny_digits_spec

pytestmark = pytest.mark.slow
STEPS, EVERY = 160, 20


def _spec_file(tmp_path: Path, name: str) -> Path:
    spec = tiny_digits_spec(tmp_path / name)
    spec["stages"] = spec["stages"][:1]
    spec["stages"][0].update({"steps": STEPS, "checkpoint_every": EVERY, "log_every": EVERY})
    spec["storage"]["lease_ttl_s"] = 3.0  # the killed run's lease on its key expires 3 s after its last heartbeat
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _start(spec: Path, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "HF_HUB_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-m", "diffpipe.flows.cli", "run", str(spec)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _checkpoint_steps(root: Path) -> list[int]:
    return sorted(int(p.parent.name[5:]) for p in root.glob("runs/*/step-*/COMPLETE"))


def _weights(root: Path, folder: str) -> dict[str, torch.Tensor]:
    (path,) = [p for p in root.glob(f"objects/*/*/{folder}/*.safetensors")]
    return load_file(path)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    killed_spec = _spec_file(tmp_path, "killed")
    proc = _start(killed_spec, tmp_path)
    root = tmp_path / "killed"
    deadline = time.monotonic() + 400
    while not [s for s in _checkpoint_steps(root) if s >= 2 * EVERY]:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_checkpoint_steps(root))
    assert 0 < killed_at < STEPS
    assert not list(root.glob("objects/*/*/model"))  # nothing published for the killed stage

    out = _finish(_start(killed_spec, tmp_path))
    assert "expired" in out  # the killed holder's lease on the key, taken over
    assert f"resumed from the checkpoint at step {killed_at}" in out
    _finish(_start(_spec_file(tmp_path, "straight"), tmp_path))
    for folder in ("model", "model_online"):
        resumed, straight = _weights(root, folder), _weights(tmp_path / "straight", folder)
        assert resumed.keys() == straight.keys()
        for name in resumed:
            assert torch.equal(resumed[name], straight[name]), f"{folder}/{name} differs"
    assert not list(root.glob("runs/*/step-*"))  # checkpoints are removed once the stage is published

"""Against a real `prefect server start` on loopback: a CLI run and its artifacts (deployments: test_team_server.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from tiny_specs import tiny_digits_spec

pytestmark = [pytest.mark.slow, pytest.mark.server]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "HF_HUB_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PATH": f"{BIN}:{os.environ['PATH']}"}
    log = open(home / "server.log", "w")  # noqa: SIM115 (kept open for the server's lifetime)
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.5)
    yield api, env
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    log.close()


def _filter(api: str, what: str, body: dict | None = None) -> list[dict]:
    r = httpx.post(f"{api}/{what}/filter", json=body or {}, timeout=30)
    r.raise_for_status()
    return r.json()


def _tiny(tmp_path: Path, root: str) -> Path:
    path = tmp_path / f"{root}.yaml"
    path.write_text(yaml.safe_dump(tiny_digits_spec(tmp_path / root)))
    return path


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def _variant(spec_file: Path, overrides: list[str] | None = None) -> str:
    from diffpipe.flows.spec_loading import load_spec
    from diffpipe.flows.watch import variant

    return variant(load_spec(spec_file, overrides))


def _artifacts(api: str, key: str) -> list[dict]:
    return _filter(api, "artifacts", {"artifacts": {"key": {"any_": [key]}}})


def test_runs_are_named_keyed_and_followed_through_the_api(server, tmp_path: Path) -> None:
    api, env = server
    spec = _tiny(tmp_path, "art")
    override = "stages.sample.num_samples=30"
    v, v2 = _variant(spec), _variant(spec, [override])
    assert v != v2
    _cli([str(BIN / "diffpipe"), "run", str(spec)], env, tmp_path)
    runs = {r["name"]: r for r in _filter(api, "flow_runs")}
    first = runs[f"digits [{v}]"]  # named from the spec, not its path
    assert first["state_type"] == "COMPLETED"
    tasks = {t["name"]: t["state_type"] for t in _filter(api, "task_runs")}
    assert {"data", "pretrain", "sample", "evaluate"} <= set(tasks)
    for stage in ("data", "pretrain", "sample", "evaluate"):
        assert _artifacts(api, f"digits-{v}-{stage}-summary") and _artifacts(api, f"digits-{v}-{stage}-metrics")
    (summary,) = _artifacts(api, f"digits-{v}-sample-summary")
    assert "data:image/png;base64," in summary["data"]
    assert f"artifact: `file://{tmp_path}/art/objects/" in summary["data"]  # absolute URI
    (progress,) = _artifacts(api, f"digits-{v}-pretrain-progress")  # one artifact, updated as training ran
    assert progress["type"] == "progress" and progress["data"] == 100.0
    (sampled,) = _artifacts(api, f"digits-{v}-sample-samples-progress")  # sampling shows its progress too
    assert sampled["type"] == "progress" and sampled["data"] == 100.0
    assert len(_artifacts(api, f"digits-{v}-pretrain-loss-table")) >= 2  # drawn during training, then at the end
    assert "data:image/png;base64," in _artifacts(api, f"digits-{v}-pretrain-loss-curve")[0]["data"]

    _cli([str(BIN / "diffpipe"), "run", str(spec)], env, tmp_path)  # a rerun of the same variant: all cached
    cached = [t for t in _filter(api, "task_runs") if t["state_name"] == "Cached"]
    assert {t["name"] for t in cached} >= {"data", "pretrain", "sample", "evaluate"}
    (link,) = _artifacts(api, f"digits-{v}-pretrain-cached")
    assert first["id"] in link["data"] and "file://" in link["data"]  # the run that computed it, and where

    _cli([str(BIN / "diffpipe"), "run", str(spec), "--set", override], env, tmp_path)
    assert f"digits {override} [{v2}]" in {r["name"] for r in _filter(api, "flow_runs")}
    assert len(_artifacts(api, f"digits-{v2}-sample-summary")) == 1  # its own key: the variant v's is untouched
    assert len(_artifacts(api, f"digits-{v}-sample-summary")) == 1

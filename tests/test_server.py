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


def test_run_is_visible_through_the_api(server, tmp_path: Path) -> None:
    api, env = server
    _cli([str(BIN / "diffpipe"), "run", str(_tiny(tmp_path, "art"))], env, tmp_path)
    runs = _filter(api, "flow_runs")
    assert any(r["state_type"] == "COMPLETED" and r["name"].endswith("art.yaml") for r in runs)
    tasks = {t["name"]: t["state_type"] for t in _filter(api, "task_runs")}
    assert {"data", "pretrain", "sample", "evaluate"} <= set(tasks)
    keys = {a["key"] for a in _filter(api, "artifacts")}
    for stage in ("data", "pretrain", "sample", "evaluate"):
        assert f"digits-{stage}-summary" in keys and f"digits-{stage}-metrics" in keys
    summary = next(a for a in _filter(api, "artifacts") if a["key"] == "digits-sample-summary")
    assert "data:image/png;base64," in summary["data"]

    _cli([str(BIN / "diffpipe"), "run", str(_tiny(tmp_path, "art"))], env, tmp_path)
    cached = [t for t in _filter(api, "task_runs") if t["state_name"] == "Cached"]
    assert {t["name"] for t in cached} >= {"data", "pretrain", "sample", "evaluate"}

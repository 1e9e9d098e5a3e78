"""A team's server: real PostgreSQL (initdb in a temporary folder, loopback port), `python -m diffpipe.server`
(what `make server` runs) with basic auth on, `prefect.yaml` deployed, two process workers on one pool running
scheduled and manual runs of the digits deployment, and the bad inputs: no or wrong credentials, a spec the
library checks reject, a wrong database URL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import api_server, free_port
from tiny_specs import REPO, tiny_digits_spec

from diffpipe.server.postgres import LocalPostgres

pytestmark = [pytest.mark.slow, pytest.mark.server]
BIN = Path(sys.executable).parent
USER, PASSWORD = "team", "s3cret-pw"


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    root = Path(tempfile.mkdtemp(prefix="diffpipe-pg-"))  # not below pytest's root-only folder: as root, the
    pg = LocalPostgres(root / "cluster", free_port())  # cluster runs as the postgres user, who must reach it
    if os.geteuid() == 0:
        os.chmod(root, 0o755)
    pg.start()
    yield pg
    pg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    home = tmp_path_factory.mktemp("team-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home / "server"), "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url,
           "PREFECT_SERVER_API_AUTH_STRING": f"{USER}:{PASSWORD}", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "diffpipe.server", "--port", str(port)]
    with api_server(command, env, home / "server.log", api, cwd=home, timeout=240):
        client = {**os.environ, "PREFECT_HOME": str(home / "client"), "PREFECT_API_URL": api,
                  "PREFECT_API_AUTH_STRING": f"{USER}:{PASSWORD}", "PATH": f"{BIN}:{os.environ['PATH']}"}
        yield api, client


def _api(api: str, method: str, path: str, body: dict | None = None) -> httpx.Response:
    r = httpx.request(method, f"{api}/{path}", json=body, auth=(USER, PASSWORD), timeout=30)
    r.raise_for_status()
    return r


def _cli(args: list[str], env: dict, cwd: Path = REPO, timeout: int = 300) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def test_requests_without_the_credentials_are_refused(team_server, tmp_path: Path) -> None:
    api, client = team_server
    assert httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).status_code == 401
    assert httpx.post(f"{api}/flow_runs/filter", json={}, auth=(USER, "wrong"), timeout=30).status_code == 401
    assert _api(api, "POST", "flow_runs/filter", {}).status_code == 200
    ui = httpx.get(f"{api.removesuffix('/api')}/ui-settings", timeout=30).json()
    assert ui["api_url"] == api and ui["auth"] == "BASIC"  # the browser UI reads this server, not port 4200
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_digits_spec(tmp_path / "artifacts")))
    wrong = {**client, "PREFECT_API_AUTH_STRING": f"{USER}:wrong"}
    done = subprocess.run([str(BIN / "diffpipe"), "run", str(spec)], env=wrong, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "PREFECT_API_AUTH_STRING: the Prefect server refused the credentials" in done.stderr
    assert not (tmp_path / "artifacts").exists()


def test_two_workers_run_scheduled_and_manual_runs_of_the_deployment(team_server, tmp_path: Path) -> None:
    api, client = team_server
    _cli([str(BIN / "prefect"), "work-pool", "create", "diffpipe", "--type", "process"], client)
    _cli([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], client)
    (dep,) = [d for d in _api(api, "POST", "deployments/filter", {}).json() if d["name"] == "digits-nightly"]
    assert dep["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert dep["global_concurrency_limit"]["limit"] == 1
    assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert dep["parameters"]["timeout_minutes"] > 0
    for schedule in dep["schedules"]:  # nothing at 02:00 tonight: this test's runs are its own
        _api(api, "PATCH", f"deployments/{dep['id']}/schedules/{schedule['id']}", {"active": False})
    for r in _runs(api, dep["id"]):
        _api(api, "DELETE", f"flow_runs/{r['id']}")

    workers = {name: subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "diffpipe", "--name", name],
                                      env=client, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True) for name in ("worker-a", "worker-b")}
    try:
        _wait_for_workers(api, set(workers))
        spec = tmp_path / "tiny.yaml"
        spec.write_text(yaml.safe_dump(tiny_digits_spec(tmp_path / "artifacts")))
        run = [str(BIN / "prefect"), "deployment", "run", "diffpipe/digits-nightly", "--param", f"spec_path={spec}"]
        _cli([*run, "--start-in", "5 seconds"], client)  # a scheduled run: either worker may take it
        (scheduled,) = _wait_for_runs(api, dep["id"], 1)
        first = _worker_of(scheduled)
        _stop(workers.pop(first))  # that worker leaves the pool: the other one must run what comes next
        _cli(run, client)  # a manual run
        bad = ["stages.sample.scheduler.options={no_such_option: 1}"]  # only the library checks catch it
        _cli([*run, "--param", f"overrides={json.dumps(bad)}"], client)
        runs = _wait_for_runs(api, dep["id"], 3)
    finally:
        for w in workers.values():
            _stop(w)
    (second,) = workers
    by_worker = {r["id"]: _worker_of(r) for r in runs}
    assert by_worker.pop(scheduled["id"]) == first and set(by_worker.values()) == {second}  # each ran runs
    by_overrides = {bool(r["parameters"].get("overrides")): r for r in runs}
    assert sorted(r["state_type"] for r in runs) == ["COMPLETED", "COMPLETED", "FAILED"]
    failed = by_overrides[True]
    assert failed["state_type"] == "FAILED"
    assert "stages[1].scheduler.options.no_such_option: FlowMatchEulerDiscreteScheduler has no such option" in (
        failed["state"]["message"])
    assert len(list((tmp_path / "artifacts").glob("manifests/*.json"))) == 4  # computed once, then cached


def _wait_for_workers(api: str, names: set[str], timeout_s: float = 120) -> None:
    """Until every named worker has registered with the pool (it polls for runs from then on)."""
    deadline = time.monotonic() + timeout_s
    while not names <= {w["name"] for w in _api(api, "POST", "work_pools/diffpipe/workers/filter", {}).json()}:
        assert time.monotonic() < deadline, f"workers {sorted(names)} did not register"
        time.sleep(0.5)


def _worker_of(run: dict) -> str:
    """The worker that executed a flow run: the label it gives the run after winning the run's Pending state."""
    assert run["infrastructure_pid"], run  # it was started as a process, not merely claimed
    return run["labels"]["prefect.worker.name"]


def _stop(worker: subprocess.Popen) -> None:
    """SIGTERM a worker's process group; SIGKILL if it is still busy polling a loaded server 30 s later."""
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def _runs(api: str, deployment_id: str) -> list[dict]:
    return _api(api, "POST", "flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}).json()


def _wait_for_runs(api: str, deployment_id: str, n: int, timeout_s: float = 900) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = _runs(api, deployment_id)
        if len(runs) >= n and all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
            return runs
        assert time.monotonic() < deadline, [(r["name"], r["state_type"]) for r in runs]
        time.sleep(1)


def test_a_wrong_database_url_exits_2_naming_it(postgres: LocalPostgres, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path),
           "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url.replace(postgres.password, "not-the-password")}
    done = subprocess.run([sys.executable, "-m", "diffpipe.server"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "PREFECT_API_DATABASE_CONNECTION_URL: cannot connect to the database" in done.stderr
    assert "not-the-password" not in done.stderr and "password authentication failed" in done.stderr
    for url, why in ((f"postgresql+asyncpg://prefect:pw@127.0.0.1:{free_port()}/prefect", "ConnectionRefused"),
                     ("postgres-at-db-host", "not a database URL")):  # nothing listens there; not a URL at all
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = url
        done = subprocess.run([sys.executable, "-m", "diffpipe.server"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and "PREFECT_API_DATABASE_CONNECTION_URL: " in done.stderr, done.stderr[-2000:]
        assert why in done.stderr

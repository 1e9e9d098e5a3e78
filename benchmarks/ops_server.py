"""Operations numbers: artifacts on S3 vs local disk, a Prefect server on PostgreSQL vs SQLite, deployment latency.

1. `diffpipe run pipelines/digits.yaml` cold and warm with `storage.root` on local disk and on an S3 server on
   loopback (moto's server mode, in this process); for S3 also a warm run on an empty read cache (a new
   machine). No Prefect server is configured, as a user runs it.
2. The cached rerun's wall time against a Prefect server on PostgreSQL (`python -m diffpipe.server`, a local
   cluster) and on SQLite (`prefect server start`): against a server the flow runs and records every cached
   task, so this is the cost of the server's database. Median of `--repeats`.
3. Time from `prefect deployment run` to the flow run's start (the server's `start_time`) with two process
   workers on one pool, on the PostgreSQL server, default worker polling (PREFECT_WORKER_QUERY_SECONDS).

Every run is a real `diffpipe run` / `prefect` process, one at a time; torch uses `--threads` (1). On a
shared machine the numbers are noisy: the load average is recorded before and after.
Usage: nice -n 10 python benchmarks/ops_server.py [--set PATH=VALUE ...] [--repeats 3] [--deployment-runs 4]
                                                  [--parts storage server] [--quick] [--out DIR] [--threads N]
Part 1 runs digits with `--set` (default: `stages.pretrain.steps=100 stages.sample.num_samples=100`);
`--quick` runs tiny sizes, one repeat and one deployment run, and writes to a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import yaml
from harness import REPO, environment, open_benchmark, parser, write_result

BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests"))
from tiny_specs import tiny_digits_spec  # noqa: E402

from diffpipe.server.postgres import LocalPostgres, pg_binary  # noqa: E402

BUCKET = "diffpipe-bench"
FULL = ["stages.pretrain.steps=100", "stages.sample.num_samples=100"]
TINY = ["stages.pretrain.steps=2", "stages.sample.num_samples=10", "stages.sample.scheduler.steps=2"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(args: list[str], env: dict[str, str], cwd: Path = REPO) -> float:
    """Wall seconds of one command (exits with its output if it fails)."""
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(" ".join(args) + "\n" + done.stdout[-2000:] + done.stderr[-2000:])
    return wall


def run_spec(spec: Path, root: str, overrides: list[str], env: dict[str, str]) -> float:
    """Wall seconds of `diffpipe run SPEC` with the artifact root at `root`."""
    args = [sys.executable, "-m", "diffpipe.flows.cli", "run", str(spec), "--set", f"storage.root={root}"]
    for o in overrides:
        args += ["--set", o]
    return timed(args, env)


def storage_backends(tmp: Path, overrides: list[str], env: dict[str, str]) -> dict:
    """Cold and warm digits runs on local disk and on moto's S3 server."""
    from moto.server import ThreadedMotoServer

    spec = REPO / "pipelines" / "digits.yaml"
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
          "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "DIFFPIPE_CACHE_DIR": str(tmp / "c1")}
    try:
        subprocess.run([sys.executable, "-c", f"import s3fs; s3fs.S3FileSystem().mkdir('{BUCKET}')"], env=s3,
                       check=True)
        run_spec(spec, str(tmp / "warmup"), overrides + TINY, env)  # migrates Prefect's database once
        disk = {"cold_s": run_spec(spec, str(tmp / "disk"), overrides, env),
                "warm_s": run_spec(spec, str(tmp / "disk"), overrides, env)}
        root = f"s3://{BUCKET}/digits"
        remote = {"cold_s": run_spec(spec, root, overrides, s3), "warm_s": run_spec(spec, root, overrides, s3),
                  "warm_empty_read_cache_s": run_spec(spec, root, overrides, {**s3, "DIFFPIPE_CACHE_DIR":
                                                                               str(tmp / "c2")})}
    finally:
        server.stop()
    return {"spec": "pipelines/digits.yaml", "overrides": overrides, "local_disk": disk, "s3_moto_loopback": remote,
            "s3_over_disk_cold": remote["cold_s"] / disk["cold_s"],
            "s3_over_disk_warm": remote["warm_s"] / disk["warm_s"]}


class Server:
    """A Prefect server process (its whole process group is stopped at the end)."""

    def __init__(self, args: list[str], env: dict[str, str], home: Path):
        self.log = open(home / "server.log", "w")  # noqa: SIM115 (open while the server runs)
        self.proc = subprocess.Popen(args, env=env, cwd=home, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.home = home

    def wait(self, api: str, timeout_s: float = 300) -> float:
        """Seconds until /health answers."""
        t0 = time.perf_counter()
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.perf_counter() - t0 > timeout_s:
                raise SystemExit("server did not start:\n" + (self.home / "server.log").read_text()[-3000:])
            time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM to the group, then wait (SIGKILL after 30 s)."""
        stop_group([self.proc])
        self.log.close()


def stop_group(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group; SIGKILL what is still there 30 s later."""
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def start_server(kind: str, tmp: Path, env: dict[str, str], pg: LocalPostgres | None) -> tuple[Server, str, dict]:
    """A PostgreSQL-backed (`python -m diffpipe.server`) or SQLite-backed (`prefect server start`) server."""
    home = tmp / f"server-{kind}"
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = {**env, "PREFECT_HOME": str(home)}
    server_env.pop("PREFECT_API_URL", None)
    if pg is not None:
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = pg.url
        args = [sys.executable, "-m", "diffpipe.server", "--port", str(port)]
    else:
        args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = Server(args, server_env, home)
    return server, api, {"startup_s": server.wait(api)}


def cached_reruns(spec: Path, client: dict[str, str], repeats: int) -> dict:
    """The first (computing) run, then `repeats` cached reruns against the configured server."""
    first = timed([str(BIN / "diffpipe"), "run", str(spec)], client)
    reruns = [timed([str(BIN / "diffpipe"), "run", str(spec)], client) for _ in range(repeats)]
    return {"first_run_s": first, "cached_rerun_s": reruns, "cached_rerun_median_s": statistics.median(reruns)}


def deployment_latency(api: str, client: dict[str, str], spec: Path, runs: int) -> dict:
    """Seconds from issuing `prefect deployment run` to the flow run's start, with two process workers."""
    timed([str(BIN / "prefect"), "work-pool", "create", "diffpipe", "--type", "process"], client)
    timed([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], client)
    deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    dep = next(d for d in deps if d["name"] == "digits-nightly")
    for schedule in dep["schedules"]:  # only the runs issued here
        httpx.patch(f"{api}/deployments/{dep['id']}/schedules/{schedule['id']}", json={"active": False}, timeout=30)
    workers = [subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "diffpipe", "--name", f"w{i}"],
                                env=client, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True) for i in range(2)]
    latencies = []
    try:
        time.sleep(15)  # both workers polling
        for _ in range(runs):
            issued = datetime.now(UTC)
            out = subprocess.run([str(BIN / "prefect"), "deployment", "run", "diffpipe/digits-nightly", "--param",
                                  f"spec_path={spec}"], env=client, cwd=REPO, capture_output=True, text=True).stdout
            run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
            latencies.append((_wait_started(api, run_id) - issued).total_seconds())
            _wait_done(api, run_id)
    finally:
        stop_group(workers)
    return {"runs": runs, "latency_s": latencies, "median_s": statistics.median(latencies),
            "worker_query_seconds": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "10 (default)")}


def _flow_run(api: str, run_id: str) -> dict:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()


def _wait_started(api: str, run_id: str) -> datetime:
    while True:
        run = _flow_run(api, run_id)
        if run.get("start_time"):
            return datetime.fromisoformat(run["start_time"].replace("Z", "+00:00"))
        time.sleep(0.2)


def _wait_done(api: str, run_id: str) -> None:
    while _flow_run(api, run_id)["state_type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        time.sleep(0.5)


def services() -> dict[str, Any]:
    """Versions of what part 2 and 3 run against (the harness records the rest of the environment)."""
    pg = subprocess.run([pg_binary("postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    return {"postgres": pg, **{p: metadata.version(p) for p in ("s3fs", "moto", "asyncpg")}}


def main() -> None:
    """Run the three measurements; print and write `ops_server.json` (benchmarks/results unless --quick/--out)."""
    options = parser(__doc__)
    options.add_argument("--set", action="append", default=None, dest="overrides", help="digits overrides (part 1)")
    options.add_argument("--repeats", type=int, default=3)
    options.add_argument("--deployment-runs", type=int, default=4)
    options.add_argument("--parts", nargs="+", choices=["storage", "server"], default=["storage", "server"])
    args = open_benchmark(options.parse_args())
    if args.overrides is None:
        args.overrides = TINY if args.quick else FULL
    if args.quick:
        args.repeats, args.deployment_runs = 1, 1
    out = args.out / "ops_server.json"
    result: dict = json.loads(out.read_text()) if out.is_file() else {}  # parts not run keep their last numbers
    result.pop("environment", None)
    result.update({"command": " ".join(["python", *sys.argv]), "services": services(),
                   "load_before": os.getloadavg()[0]})
    tmp = Path(tempfile.mkdtemp(prefix="diffpipe-ops-bench-"))
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    pg = None
    try:
        if "storage" in args.parts:
            result["storage"] = storage_backends(tmp, args.overrides, env)
            save(out, result)
        if "server" not in args.parts:
            return
        spec = tmp / "tiny.yaml"
        spec.write_text(yaml.safe_dump(tiny_digits_spec(tmp / "server-artifacts")))
        if os.geteuid() == 0:
            os.chmod(tmp, 0o755)  # the cluster runs as the postgres user, who must reach its folder
        pg = LocalPostgres(tmp / "postgres", free_port())
        pg.start()
        servers = {}
        for kind in ("postgresql", "sqlite"):
            server, api, info = start_server(kind, tmp, env, pg if kind == "postgresql" else None)
            try:
                shutil.rmtree(tmp / "server-artifacts", ignore_errors=True)
                client = {**env, "PREFECT_HOME": str(tmp / f"server-{kind}" / "client"), "PREFECT_API_URL": api}
                servers[kind] = {**info, **cached_reruns(spec, client, args.repeats)}
                save(out, {**result, "server_database": servers})
                if kind == "postgresql":
                    result["deployment_to_start"] = deployment_latency(api, client, spec, args.deployment_runs)
                    save(out, result)
            finally:
                server.stop()
        servers["postgresql_over_sqlite_cached_rerun"] = (servers["postgresql"]["cached_rerun_median_s"]
                                                          / servers["sqlite"]["cached_rerun_median_s"])
        result["server_database"] = servers
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        result["load_after"] = os.getloadavg()[0]
        write_result("ops_server", result, args.out)


def save(path: Path, result: dict) -> None:
    """Write the results so far, with the environment (a part that fails later keeps what the others measured)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "environment": environment()}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()

"""A PostgreSQL cluster in a folder of its own on a loopback port, for a Prefect server (or a test) to use.

`initdb` runs on first use with a random password (scram-sha-256, kept in `<root>/password`, mode 600);
the server listens on 127.0.0.1 only, with its Unix socket inside the folder. Run as root, the cluster is
owned by and runs as the `postgres` system user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from diffpipe.errors import InputError


def pg_binary(name: str) -> str:
    """Path of a PostgreSQL program (`initdb`, `postgres`, ...), on PATH or in Debian's versioned folder."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        raise InputError("PostgreSQL", f"'{name}' is not installed", "the postgresql package (apt install "
                         "postgresql)", "no such program on PATH or in /usr/lib/postgresql/*/bin")
    return found


class LocalPostgres:
    """One PostgreSQL cluster under `root` (data in `root/data`) listening on 127.0.0.1:`port`."""

    def __init__(self, root: Path, port: int, database: str = "prefect", user: str = "prefect"):
        self.root, self.port, self.database, self.user = Path(root), port, database, user
        self.data = self.root / "data"
        self.process: subprocess.Popen | None = None
        self._as = "postgres" if os.geteuid() == 0 else None

    @property
    def password(self) -> str:
        """The cluster's password (written at initdb)."""
        return (self.root / "password").read_text().strip()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Prefect takes in PREFECT_API_DATABASE_CONNECTION_URL."""
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def start(self, timeout_s: float = 60) -> None:
        """initdb if needed, start the server, wait until it accepts connections, create the database."""
        if not (self.data / "PG_VERSION").is_file():
            self._initdb()
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 (the server's log, open while it runs)
        self.process = subprocess.Popen(
            [pg_binary("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.data),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=log, stderr=subprocess.STDOUT, user=self._as, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while self._run("pg_isready", "-q").returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{tail}")
            time.sleep(0.2)
        exists = self._run("psql", "-d", "postgres", "-tAc",
                           f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists.stdout.strip() != "1":
            self._run("createdb", self.database, check=True)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), waiting for the server to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pw = self.root / "password"
        pw.write_text(secrets.token_urlsafe(24) + "\n")
        pw.chmod(0o600)
        if self._as:
            entry = pwd.getpwnam(self._as)
            for path in (self.root, pw):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        subprocess.run([pg_binary("initdb"), "-D", str(self.data), "-U", self.user, "--auth=scram-sha-256",
                        f"--pwfile={pw}", "-E", "UTF8", "--no-instructions"], check=True, user=self._as,
                       capture_output=True)

    def _run(self, program: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, "PGPASSWORD": self.password}
        return subprocess.run([pg_binary(program), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, *args],
                              env=env, capture_output=True, text=True, check=check)

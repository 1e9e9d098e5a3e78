"""`python -m diffpipe.server` (`make server`): a Prefect server on PostgreSQL, on 127.0.0.1 by default.

With PREFECT_API_DATABASE_CONNECTION_URL set, that database is checked and used. Without it, a local
PostgreSQL cluster is created (first time) and started under `.prefect/postgres` on port
DIFFPIPE_POSTGRES_PORT (54329), and stopped with the server. PREFECT_SERVER_API_AUTH_STRING, when set,
turns on basic auth for the API and the UI. Extra arguments go to `prefect server start`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from diffpipe.errors import InputError

from .checks import DATABASE_SETTING, check_database
from .postgres import LocalPostgres


def main(argv: list[str]) -> int:
    """Start PostgreSQL if needed, then `prefect server start`; exit 2 with a message for a bad database."""
    local = None
    try:
        if not os.environ.get(DATABASE_SETTING):
            port = int(os.environ.get("DIFFPIPE_POSTGRES_PORT", "54329"))
            local = LocalPostgres(Path(".prefect") / "postgres", port)
            local.start()
            os.environ[DATABASE_SETTING] = local.url
        check_database(os.environ[DATABASE_SETTING])
        host = os.environ.get("PREFECT_SERVER_API_HOST", "127.0.0.1")
        auth = "on" if os.environ.get("PREFECT_SERVER_API_AUTH_STRING") else "off (set PREFECT_SERVER_API_AUTH_STRING)"
        print(f"Prefect server on PostgreSQL, host {host}, basic auth {auth}", file=sys.stderr)
        prefect = Path(sys.executable).with_name("prefect")
        return subprocess.call([str(prefect), "server", "start", "--host", host, *argv])
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if local is not None:
            local.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

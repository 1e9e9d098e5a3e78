"""`python -m diffpipe.server` (`make server`): a Prefect server on PostgreSQL, on 127.0.0.1 by default.

With PREFECT_API_DATABASE_CONNECTION_URL set, that database is checked and used. Without it, a local
PostgreSQL cluster is created (first time) and started under `.prefect/postgres` on port
DIFFPIPE_POSTGRES_PORT (54329), and stopped with the server. PREFECT_SERVER_API_AUTH_STRING, when set,
turns on basic auth for the API and the UI. The browser UI asks PREFECT_UI_API_URL for its data: unless
it (or PREFECT_API_URL) is set, it is this server's own address, `http://HOST:PORT/api` (Prefect would
otherwise point it at port 4200 whatever `--port` says). Extra arguments go to `prefect server start`.
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
        ui_api = ui_api_url(host, _port(argv))
        auth = "on" if os.environ.get("PREFECT_SERVER_API_AUTH_STRING") else "off (set PREFECT_SERVER_API_AUTH_STRING)"
        print(f"Prefect server on PostgreSQL, host {host}, basic auth {auth}, the UI reads {ui_api}", file=sys.stderr)
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


def ui_api_url(host: str, port: str) -> str:
    """The API address the browser UI uses, set in PREFECT_UI_API_URL unless that or PREFECT_API_URL is set."""
    url = os.environ.get("PREFECT_UI_API_URL") or os.environ.get("PREFECT_API_URL")
    if not url:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a browser on this machine reaches it there
        url = os.environ["PREFECT_UI_API_URL"] = f"http://{shown}:{port}/api"
    return url


def _port(argv: list[str]) -> str:
    """The port `prefect server start` will listen on: `--port N` / `--port=N`, else PREFECT_SERVER_API_PORT."""
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--port="):
            return arg.split("=", 1)[1]
    return os.environ.get("PREFECT_SERVER_API_PORT", "4200")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

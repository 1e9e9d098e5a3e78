"""Clear errors, before anything starts, for a database or a Prefect server that will not have us."""

from __future__ import annotations

import asyncio

from diffpipe.errors import InputError

DATABASE_SETTING = "PREFECT_API_DATABASE_CONNECTION_URL"


def check_database(url: str, timeout_s: float = 10) -> None:
    """Raise InputError unless a PostgreSQL URL accepts a connection (other URLs, such as SQLite, pass)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise InputError(DATABASE_SETTING, "not a database URL", "postgresql+asyncpg://user:password@host:port/db",
                         repr(url)) from e
    if not parsed.drivername.startswith("postgresql"):
        return
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                                     password=parsed.password, database=parsed.database, timeout=timeout_s)
        await conn.close()

    try:
        asyncio.run(probe())
    except (TimeoutError, OSError, asyncpg.PostgresError) as e:
        raise InputError(DATABASE_SETTING, "cannot connect to the database", "a reachable PostgreSQL with that "
                         "user, password and database", f"{parsed.render_as_string(hide_password=True)} "
                         f"({e.__class__.__name__}: {e})") from e


def check_api() -> None:
    """Raise InputError when the configured Prefect server does not answer or refuses our credentials."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    try:
        with get_client(sync_client=True) as client:
            client.read_flow_runs(limit=1)
    except httpx.HTTPStatusError as e:
        if e.response.status_code in (401, 403):
            raise InputError("PREFECT_API_AUTH_STRING", "the Prefect server refused the credentials",
                             "the server's user:password in PREFECT_API_AUTH_STRING",
                             f"HTTP {e.response.status_code} from {url}") from e
        raise
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise InputError("PREFECT_API_URL", "no Prefect server answers there", "a running server",
                         f"{url} ({e.__class__.__name__})") from e

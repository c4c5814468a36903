"""Tortoise configuration, from the DATABASE_URL of the settings; the read replica of
DATABASE_REPLICA_URL (`replica`), for admin reads only."""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tortoise import Tortoise, connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.backends.base.config_generator import expand_db_url

# asyncpg's pool in Tortoise defaults to 5 connections: too few for 64 concurrent requests
# per worker. Several workers × this must stay under PostgreSQL's max_connections (100).
DEFAULT_POOL = {"minsize": "2", "maxsize": "20"}


def with_pool(database_url: str) -> str:
    """A PostgreSQL URL with a connection pool sized for a worker, unless the URL sets one."""
    if not database_url.startswith(("postgres://", "asyncpg://", "psycopg://")):
        return database_url
    parts = urlsplit(database_url)
    query = dict(parse_qsl(parts.query))
    for key, value in DEFAULT_POOL.items():
        query.setdefault(key, os.environ.get(f"DB_POOL_{key.upper()}", value))
    return urlunsplit(parts._replace(query=urlencode(query)))


def connection(database_url: str, statement_timeout: float | None = None) -> str | dict:
    """Tortoise's connection config. With `statement_timeout` (seconds, PostgreSQL only) every
    statement is cancelled by the server past it, and the client gives up on connecting or on
    an answer shortly after (a black-holed server), so a request fails fast, never hangs."""
    url = with_pool(database_url)
    if not url.startswith(("postgres://", "asyncpg://")):
        return url
    from tortoise.backends.base.config_generator import expand_db_url

    config = expand_db_url(url)
    credentials = config["credentials"]
    # asyncpg's default reset on every release to the pool is a round trip of its own (RESET
    # ALL, CLOSE ALL, UNLISTEN *, advisory unlock): as many as the queries themselves. Nothing
    # here leaves session state behind (SET LOCAL only, no LISTEN, cursors or session advisory
    # locks); asyncpg still rolls back a connection released inside a transaction.
    credentials["reset"] = _keep_session
    if statement_timeout:
        settings = dict(credentials.get("server_settings") or {})
        settings["statement_timeout"] = str(int(statement_timeout * 1000))
        credentials.update(server_settings=settings, timeout=statement_timeout,
                           command_timeout=statement_timeout + 1)
    return config


async def _keep_session(connection) -> None:
    """The pool's reset: nothing to reset (see `connection`)."""


def tortoise_config(database_url: str, statement_timeout: float | None = None) -> dict:
    return {
        "connections": {"default": connection(database_url, statement_timeout)},
        "apps": {
            "models": {
                "models": ["app.models"],
                "migrations": "app.migrations",
                "default_connection": "default",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


@contextlib.asynccontextmanager
async def orm(database_url: str, statement_timeout: float | None = None) -> AsyncIterator[None]:
    """Tortoise on `database_url` for the length of the block, its pools closed after.

    Tortoise keeps its connections per context, and a block may end in another context than
    it began (aiohttp's cleanup under pytest-aiohttp, async fixtures): the pools opened here
    are closed by hand, or each one would keep up to its maxsize PostgreSQL connections open."""
    await Tortoise.init(config=tortoise_config(database_url, statement_timeout))
    opened = connections.all()
    try:
        yield
    finally:
        for conn in opened:
            await conn.close()
        await Tortoise.close_connections()


# Admin reads scan months of rows: the 4 MB default work_mem makes their sorts spill to disk,
# and JIT compiling buys nothing on scans this short (the primary sets these per transaction).
REPLICA_SETTINGS = {"jit": "off", "work_mem": "64MB"}


@contextlib.asynccontextmanager
async def replica(url: str) -> AsyncIterator[BaseDBAsyncClient]:
    """A Tortoise client on the read replica, for the length of the block.

    It is not one of Tortoise's named connections (with two, every unnamed `in_transaction()`
    would have to name one): admin read functions take it as their `reads` argument, and
    writes, and reads that decide a write, never see it."""
    info = expand_db_url(with_pool(url))
    if not info["engine"].endswith("asyncpg"):
        raise ValueError("DATABASE_REPLICA_URL must be a PostgreSQL URL")
    client_class = importlib.import_module(info["engine"]).client_class
    client = client_class(connection_name="replica", server_settings=dict(REPLICA_SETTINGS),
                          **info["credentials"])
    await client.create_connection(with_db=True)
    try:
        yield client
    finally:
        await client.close()


# How far behind the primary the replica's data is: 0 when it has replayed everything it was
# sent (an idle primary sends nothing, so the last replayed commit may be old without any lag).
REPLICA_LAG = (
    "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END AS lag")


async def replica_lag_seconds(reads: BaseDBAsyncClient) -> float:
    """Seconds of commits the replica has received but not replayed yet."""
    rows = await reads.execute_query_dict(REPLICA_LAG)
    return round(float(rows[0]["lag"] or 0), 3)


# For the `tortoise` CLI (makemigrations) during development.
TORTOISE_ORM = tortoise_config(os.environ.get("DATABASE_URL") or "sqlite://data/dev.sqlite3")


def asyncpg_client():
    """Tortoise's default connection when it is asyncpg, else None (SQLite): the hot paths'
    own SQL (`acquire_connection()` → an asyncpg connection from Tortoise's pool, whose
    statement cache prepares each statement once per connection)."""
    from tortoise.backends.asyncpg.client import AsyncpgDBClient

    client = connections.get("default")
    return client if isinstance(client, AsyncpgDBClient) else None

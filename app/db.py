"""Tortoise configuration, from the DATABASE_URL of the settings."""
from __future__ import annotations

import contextlib
import os
from typing import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tortoise import Tortoise, connections

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


def tortoise_config(database_url: str) -> dict:
    return {
        "connections": {"default": with_pool(database_url)},
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
async def orm(database_url: str) -> AsyncIterator[None]:
    """Tortoise on `database_url` for the length of the block, its pools closed after.

    Tortoise keeps its connections per context, and a block may end in another context than
    it began (aiohttp's cleanup under pytest-aiohttp, async fixtures): the pools opened here
    are closed by hand, or each one would keep up to its maxsize PostgreSQL connections open."""
    await Tortoise.init(config=tortoise_config(database_url))
    opened = connections.all()
    try:
        yield
    finally:
        for conn in opened:
            await conn.close()
        await Tortoise.close_connections()


# For the `tortoise` CLI (makemigrations) during development.
TORTOISE_ORM = tortoise_config(os.environ.get("DATABASE_URL") or "sqlite://data/dev.sqlite3")

"""Operations: /healthz (database and Redis) and /metrics (Prometheus text)."""
from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tortoise import connections

from app import keys


async def _database() -> None:
    await connections.get("default").execute_query("SELECT 1")


# A probe gives up after this long: a black-holed dependency is "down", and quickly.
PROBE_TIMEOUT = 1.5


async def _probe(probe) -> str:
    try:
        await asyncio.wait_for(probe, timeout=PROBE_TIMEOUT)
        return "ok"
    except Exception as exc:  # any failure of a dependency is "down", with its reason
        return f"down: {type(exc).__name__}"


async def healthz(request: web.Request) -> web.Response:
    database, redis = await asyncio.gather(_probe(_database()), _probe(request.app[keys.redis_key].ping()))
    checks = {"database": database, "redis": redis}
    healthy = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ok" if healthy else "degraded", "checks": checks},
                             status=200 if healthy else 503)


async def prometheus(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(generate_latest)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

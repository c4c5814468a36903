"""Operations: /healthz (database and Redis) and /metrics (Prometheus text)."""
from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tortoise import connections

from app import keys, metrics
from app.domain import outbox


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


async def _refresh_outbox_gauges() -> None:
    counts = await outbox.depth()
    seen = set(counts)
    for labels in list(metrics.OUTBOX_MESSAGES._metrics):  # noqa: SLF001 - zero what emptied
        if labels not in seen:
            metrics.OUTBOX_MESSAGES.labels(*labels).set(0)
    for (channel, status), n in counts.items():
        metrics.OUTBOX_MESSAGES.labels(channel, status).set(n)


async def prometheus(request: web.Request) -> web.Response:
    try:
        # A scrape must answer even when the database does not: the gauges keep their last value.
        await asyncio.wait_for(_refresh_outbox_gauges(), timeout=1)
    except Exception:  # noqa: BLE001 - the database being down is what /healthz reports
        pass
    body = await asyncio.to_thread(generate_latest)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

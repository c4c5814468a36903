"""Operators: GET /admin/metrics?from=YYYY-MM-DD&to=YYYY-MM-DD (see app/domain/metrics.py), with
`replica_lag_seconds` when the figures come from a read replica (DATABASE_REPLICA_URL)."""
from __future__ import annotations

from aiohttp import web

from app import db, keys
from app.domain import metrics, rules
from handlers.admin.auth import require_admin
from handlers.bodies import query_int


async def show(request: web.Request) -> web.Response:
    require_admin(request)
    first, last = metrics.parse_range(first=request.query.get("from"), last=request.query.get("to"))
    fen_per_point = query_int(request, "fen_per_point", 1, low=0, high=100_000)
    current = await rules.load()
    result = await metrics.cached(
        redis=request.app[keys.redis_key], first=first, last=last, tz=request.app[keys.settings_key].tz,
        tier_keys=tuple(level.key for level in current.tiers.levels), fen_per_point=fen_per_point,
        now=request.app[keys.clock_key].now(), reads=request.app[keys.replica_key])
    if request.app[keys.replica_key] is not None:  # read from the replica: say how far behind it is
        result = {**result, "replica_lag_seconds": await db.replica_lag_seconds(request.app[keys.replica_key])}
    return web.json_response(result)

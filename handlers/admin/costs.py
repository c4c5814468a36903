"""Operators: GET /admin/costs?from=YYYY-MM-DD&to=YYYY-MM-DD — benefit cost ratio and member ROI
(see app/domain/costs.py)."""
from __future__ import annotations

from aiohttp import web

from app import keys
from app.domain import costs, metrics, rules
from handlers.admin.auth import require_admin


async def show(request: web.Request) -> web.Response:
    require_admin(request)
    first, last = metrics.parse_range(first=request.query.get("from"), last=request.query.get("to"))
    result = await costs.report(first=first, last=last, rules=await rules.load(),
                                tz=request.app[keys.settings_key].tz)
    return web.json_response(result)

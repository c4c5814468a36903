"""Admin: find members, look at one, adjust a member's points (idempotent, audited)."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field, StrictInt, StrictStr

from app import keys
from app.domain import operators, rules
from app.errors import NotFound
from handlers.admin.auth import require_admin
from handlers.bodies import parse


class PointsBody(BaseModel):
    delta: StrictInt = Field(ge=-10_000_000, le=10_000_000)
    reason: StrictStr
    idempotency_key: StrictStr


def _member_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound("member not found", code="member_not_found")
    return int(raw)


async def search(request: web.Request) -> web.Response:
    require_admin(request)
    found = await operators.search(q=request.query.get("q", ""), reads=request.app[keys.replica_key])
    return web.json_response({"items": [operators.render_member(m) for m in found]})


async def show(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response(await operators.detail(member_id=_member_id(request)))


async def adjust_points(request: web.Request) -> web.Response:
    actor = require_admin(request)
    who = _member_id(request)
    body = await parse(request, PointsBody)
    result = await operators.adjust_points(
        member_id=who, delta=body.delta, reason=body.reason, idempotency_key=body.idempotency_key,
        actor=actor, now=request.app[keys.clock_key].now(),
        expiry_months=(await rules.load()).points.expiry_months)
    return web.json_response({"entry": operators.render_entry(result.entry), "balance": result.balance,
                              "created": result.created})

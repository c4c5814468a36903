"""Admin: recharge packages, refunding a recharge, and the daily reconciliation with WeChat Pay."""
from __future__ import annotations

from datetime import date

from aiohttp import web
from pydantic import BaseModel, Field, StrictInt, StrictStr

from app import keys
from app.domain import reconciliation, recharges
from app.errors import InvalidField, NotFound
from handlers.admin.auth import require_admin
from handlers.bodies import parse


class PackageBody(BaseModel):
    name: StrictStr = Field(min_length=1, max_length=64)
    pay_fen: StrictInt = Field(ge=1, le=100_000_000)
    bonus_fen: StrictInt = Field(0, ge=0, le=100_000_000)
    bonus_valid_days: StrictInt | None = Field(None, ge=1, le=3650)


async def packages(request: web.Request) -> web.Response:
    require_admin(request)
    rows = await recharges.packages(active_only=False)
    return web.json_response({"items": [recharges.render_package(p) for p in rows]})


async def create_package(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await parse(request, PackageBody)
    row = await recharges.create_package(name=body.name, pay_fen=body.pay_fen, bonus_fen=body.bonus_fen,
                                         bonus_valid_days=body.bonus_valid_days, actor=actor)
    return web.json_response(recharges.render_package(row), status=201)


async def refund_recharge(request: web.Request) -> web.Response:
    actor = require_admin(request)
    try:
        recharge_id = int(request.match_info["id"])
    except ValueError:
        raise NotFound("no such recharge", code="recharge_not_found") from None
    out = await recharges.refund(recharge_id=recharge_id, actor=actor, now=request.app[keys.clock_key].now(),
                                 pay=request.app[keys.pay_client_key])
    return web.json_response(recharges.render_refunded(out))


async def reconciliation_report(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        day = date.fromisoformat(request.query.get("date", ""))
    except ValueError:
        raise InvalidField("date", "must be YYYY-MM-DD") from None
    return web.json_response(await reconciliation.report(bill_date=day))

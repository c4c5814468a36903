"""Admin: share campaigns, created (audited) and listed with their results, and the wake-up's."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field, StrictInt, StrictStr

from app import keys
from app.domain import campaigns, wakeup
from handlers.admin.auth import require_admin
from handlers.bodies import parse


class CampaignBody(BaseModel):
    kind: StrictStr = Field(max_length=16)
    key: StrictStr = Field(max_length=32)
    coupon_discount: StrictInt = 50
    points: StrictInt = 20
    daily_limit: StrictInt = 10
    stock: StrictInt
    valid_days: StrictInt = 30


async def listing(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response({"items": await campaigns.listing(), "wakeup": await wakeup.results()})


async def create(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await parse(request, CampaignBody)
    campaign = await campaigns.create(kind=body.kind, key=body.key, coupon_discount=body.coupon_discount,
                                      points_each=body.points, daily_limit=body.daily_limit, stock=body.stock,
                                      valid_days=body.valid_days, actor=actor,
                                      now=request.app[keys.clock_key].now())
    return web.json_response({**campaigns.render(campaign), "results": await campaigns.results(campaign)},
                             status=201)

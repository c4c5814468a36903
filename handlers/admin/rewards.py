"""Admin: the points mall's items, listed and added (audited)."""
from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, StrictInt, StrictStr

from app.domain import rewards
from app.errors import InvalidField
from handlers.admin.auth import require_admin
from handlers.bodies import parse


class RewardBody(BaseModel):
    name: StrictStr = Field(min_length=1, max_length=64)
    points: StrictInt = Field(ge=0, le=100_000_000)
    cash_fen: StrictInt = Field(0, ge=0, le=100_000_000)
    stock: StrictInt = Field(ge=0, le=10_000_000)
    per_member_limit: StrictInt = Field(1, ge=1, le=10_000)
    valid_until: AwareDatetime | None = None


async def listing(request: web.Request) -> web.Response:
    require_admin(request)
    items = await rewards.listing(limit=500)
    return web.json_response({"items": [rewards.render_admin(r) for r in items]})


STATUSES = ("pending", "done", "released", "refund_due", "refunded")


async def redemptions(request: web.Request) -> web.Response:
    """`GET /admin/redemptions?status=` the newest 500: e.g. refund_due / refunded for payments
    that came after their hold was released (refunded automatically)."""
    require_admin(request)
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidField("status", f"one of {', '.join(STATUSES)}")
    items = await rewards.redemptions(status=status, limit=500)
    return web.json_response({"items": [rewards.render_redemption_admin(r) for r in items]})


async def create(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await parse(request, RewardBody)
    valid_until: datetime | None = body.valid_until
    reward = await rewards.create(name=body.name, points_cost=body.points, cash_fen=body.cash_fen,
                                  stock=body.stock, per_member_limit=body.per_member_limit,
                                  valid_until=valid_until, actor=actor)
    return web.json_response(rewards.render_admin(reward), status=201)

"""Admin: staff redeem (核销) a coupon by its code, once."""
from aiohttp import web
from pydantic import BaseModel, Field

from app import keys
from app.domain import coupons
from handlers.admin.auth import require_admin
from handlers.bodies import parse
from handlers.mp.coupons import render_coupon


class RedeemBody(BaseModel):
    code: str = Field(min_length=1, max_length=32)
    order_fen: int | None = Field(None, ge=0, le=100_000_000)  # a discount coupon's cost is taken on it


async def redeem(request: web.Request) -> web.Response:
    operator = require_admin(request)
    body = await parse(request, RedeemBody)
    now = request.app[keys.clock_key].now()
    coupon = await coupons.redeem(code=body.code, operator=operator, now=now, order_fen=body.order_fen)
    return web.json_response({**render_coupon(coupon, now=now), "member_id": coupon.member_id,
                              "used_by": coupon.used_by})

"""Mini-program: the member's coupons, with their status (available, used, expired)."""
from aiohttp import web

from app import keys
from app.domain import coupons
from handlers.mp.auth import member_id


def render_coupon(coupon, *, now) -> dict:
    tpl = coupon.template
    return {
        "id": coupon.id, "code": coupon.code, "name": tpl.name, "kind": tpl.kind,
        "amount_fen": int(tpl.amount_fen), "discount_percent": tpl.discount_percent,
        "min_spend_fen": int(tpl.min_spend_fen), "valid_from": coupon.valid_from.isoformat(),
        "expires_at": coupon.expires_at.isoformat(),
        "used_at": coupon.used_at.isoformat() if coupon.used_at else None,
        "status": coupons.status(coupon, now=now),
    }


async def mine(request: web.Request) -> web.Response:
    who = await member_id(request)
    now = request.app[keys.clock_key].now()
    rows = await coupons.of_member(member_id=who)
    return web.json_response({"items": [render_coupon(c, now=now) for c in rows]})

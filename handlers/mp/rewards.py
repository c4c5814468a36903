"""Mini-program: the points mall, and redeeming an item."""
from __future__ import annotations

from aiohttp import web

from app import keys
from app.domain import rewards
from app.errors import NotFound
from handlers.mp.auth import member_id

NOTIFY_PATH = "/wechat/pay/notify"


def render_reward(reward, redeemed: int) -> dict:
    return {
        "id": reward.id, "name": reward.name, "points": int(reward.points),
        "cash_fen": int(reward.cash_fen), "stock": int(reward.stock),
        "per_member_limit": int(reward.per_member_limit),
        "valid_until": reward.valid_until.isoformat() if reward.valid_until else None,
        "redeemed": redeemed,
    }


def render_redemption(redemption) -> dict:
    return {
        "id": redemption.id, "reward_id": redemption.reward_id, "status": redemption.status,
        "points": int(redemption.points), "cash_fen": int(redemption.cash_fen),
        "out_trade_no": redemption.out_trade_no,
        "expires_at": redemption.expires_at.isoformat() if redemption.expires_at else None,
    }


def notify_url(request: web.Request) -> str | None:
    # From PUBLIC_BASE_URL, never from Host or X-Forwarded-Proto: a client could otherwise send
    # WeChat Pay's notifications of its order to a server of its choosing.
    base = request.app[keys.settings_key].pay_notify_base
    return base + NOTIFY_PATH if base else None


async def catalogue(request: web.Request) -> web.Response:
    who = await member_id(request)
    items = await rewards.catalogue(member_id=who, now=request.app[keys.clock_key].now())
    return web.json_response({"items": [render_reward(r, n) for r, n in items]})


async def redeem(request: web.Request) -> web.Response:
    who = await member_id(request)
    try:
        reward_id = int(request.match_info["id"])
    except ValueError:
        raise NotFound("no such item in the points mall", code="reward_not_found") from None
    result = await rewards.redeem(reward_id=reward_id, member_id=who, now=request.app[keys.clock_key].now(),
                                  pay=request.app[keys.pay_client_key], notify_url=notify_url(request))
    body = {"redemption": render_redemption(result.redemption), "balance": result.balance}
    if result.pay_params is not None:
        body["pay_params"] = result.pay_params
    if result.coupon is not None:
        body["coupon"] = {"id": result.coupon.id, "code": result.coupon.code,
                          "expires_at": result.coupon.expires_at.isoformat()}
    return web.json_response(body)
